#!/usr/bin/env python
"""The CALM study: train and evaluate a grid of configurations on the embedded benchmark.

    python eval/ablate.py --grid main --seeds 0 1 2 --out runs/ablate

Each run trains ``recipes/train_caption.py`` with the base config plus the run's overrides,
then evaluates its model on the in-domain ``test`` and the out-of-domain ``test_ood`` splits.
Runs go ``--parallel`` at a time (each with its share of the cores), and the runner resumes:
a run whose ``results.json`` exists is not repeated, and an interrupted run resumes from its
last checkpoint. The table (``table-<grids>.md`` and ``.json``, e.g. ``table-main.md``, so
studies of other grids into the same ``--out`` share runs, not tables) gives, per variant, the mean and
standard deviation over seeds of each metric on both splits, the difference to the baseline
and whether it exceeds the seed noise (Welch's t-test over the seeds, two-sided p < 0.05;
with 3 seeds a difference needs roughly 3-4 standard errors to pass),
and ``ood_gap-<grids>.png`` plots out-of-domain minus in-domain score per variant.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "train_caption.py"
DEFAULT_CONFIG = REPO / "recipes" / "configs" / "synth_tiny.yaml"

BASELINE = "baseline"
# The paper's grid (Table 7 and the anchor ablations), as model overrides per variant.
GRIDS: dict[str, dict[str, list[str]]] = {
    "main": {
        BASELINE: ["alignment.variant=none"],
        # The paper's objective: S_p is the VAE's target, no gradient into it (the default).
        "calm-vae": ["alignment.variant=vae"],
        "direct-kl": ["alignment.variant=kl"],
        "direct-ce": ["alignment.variant=ce"],
        "direct-mse": ["alignment.variant=mse"],
        # Not in the paper: L_rec's gradient flows into S_p (calmcap's default until issue #11),
        # which makes one constant one-hot S_p the optimum (docs/STUDY.md).
        "calm-vae-grad-sp": ["alignment.variant=vae", "alignment.detach_text_dist=false"],
    },
    # calmcap-tiny's default label set is the pretraining world's (synth_world, 55 labels).
    "anchors": {
        BASELINE: ["anchors.num_anchors=0"],
        "K=15": ["anchors.num_anchors=15"],
        "K=30": ["anchors.num_anchors=30"],
        "K=55": ["anchors.num_anchors=null"],
    },
    "labels": {
        BASELINE: ["alignment.variant=none"],
        "synth-world": ["anchors.label_set=synth_world"],
        "charades": ["anchors.label_set=charades_157"],
        "coco": ["anchors.label_set=coco_80"],
        "synth-concepts": ["anchors.label_set=synth_concepts"],
    },
}
METRICS = ["caption/CIDEr", "caption/BLEU-4", "t2v/R@1", "t2v/R@5", "v2t/R@1"]
# What the anchor branch looked like at the last logged training step (training.anchor_statistics):
# a text entropy near 0 with a top share near 1 means S_p collapsed onto one anchor.
DIAGNOSTICS = ["anchor/text_entropy", "anchor/text_top_share", "anchor/video_entropy", "loss/rec", "loss/kl",
               "loss/align"]
SPLITS = {"in-domain": "test", "out-of-domain": "test_ood"}


def run_name(variant: str, seed: int) -> str:
    return f"{variant.replace('=', '').replace('/', '-')}_seed{seed}"


def model_key(model_name: str, overrides: list[str]) -> str:
    """The resolved model configuration of a variant: variants that resolve alike share runs.

    Without the anchor branch (variant ``none`` or K=0) the anchor and alignment settings
    build nothing, so they are left out of the key.
    """
    from calmcap.config import get_model_config

    config = get_model_config(model_name, overrides)
    data = config.to_json()
    if not config.use_anchors:
        data.pop("anchors")
        data.pop("alignment")
    return json.dumps(data, sort_keys=True)


def base_config(args: argparse.Namespace):
    """The recipe config every run starts from: ``--config`` with the ``--override`` items."""
    from calmcap.train_config import load_train_config

    return load_train_config(args.config, args.override)


def train_and_evaluate(args: argparse.Namespace, variant: str, overrides: list[str], seed: int, threads: int) -> dict:
    """One run: train (resuming if interrupted), evaluate both splits, write results.json."""
    out = Path(args.out) / run_name(variant, seed)
    results_path = out / "results.json"
    if results_path.is_file():
        return json.loads(results_path.read_text())
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    started = time.time()
    command = [
        sys.executable, str(RECIPE), "--config", str(args.config), "--resume", "latest",
        f"output_dir={out}", f"seed={seed}", f"model.overrides={json.dumps(overrides)}",
        f"data.num_workers={args.num_workers}", "data.synth.workers=1", *args.override,
    ]
    if args.steps:
        command.append(f"optim.max_steps={args.steps}")
    log = out.parent / f"{out.name}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT, check=True, cwd=REPO)
        subprocess.run(
            [sys.executable, __file__, "--evaluate-run", str(out), "--manifest", str(manifest_of(args)),
             "--eval-max-videos", str(args.eval_max_videos or 0)],
            env=env, stdout=handle, stderr=subprocess.STDOUT, check=True, cwd=REPO,
        )
    result = json.loads(results_path.read_text())
    result.update(variant=variant, seed=seed, overrides=overrides, train_seconds=time.time() - started)
    results_path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def manifest_of(args: argparse.Namespace) -> Path:
    path = Path(base_config(args).data.manifest)
    return path if path.is_absolute() else REPO / path


def evaluate_run(run_dir: Path, manifest: Path, max_videos: int) -> None:
    """Evaluate ``run_dir/model`` on test and test_ood; write ``run_dir/results.json``."""
    import torch

    from calmcap.data.dataset import VideoCaptionDataset
    from calmcap.data.manifest import read_manifest
    from calmcap.evaluation import evaluate
    from calmcap.models.calm import CALMModel
    from calmcap.train_config import load_train_config

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model = CALMModel.from_pretrained(run_dir / "model")
    # Decode as the run's own validation did (the embedded benchmark needs 40 pieces, not 20).
    decode = load_train_config(run_dir / "config.yaml").eval.decode
    results = {}
    for label, split in SPLITS.items():
        entries = read_manifest(manifest, split)[: max_videos or None]
        dataset = VideoCaptionDataset(manifest, split, model.config.num_frames, model.config.image_size,
                                      mode="videos", entries=entries)
        result = evaluate(model, dataset, batch_size=32, decode=decode, meteor=False)
        results[label] = {**result.metrics, "videos": result.counts["videos"]}
    summary = json.loads((run_dir / "summary.json").read_text())
    path = run_dir / "results.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}  # re-evaluation keeps variant, seed, times
    path.write_text(json.dumps({**previous, "splits": results, "training": summary,
                                "decode": dataclasses.asdict(decode)}, indent=2) + "\n")


def last_training_row(run_dir: Path) -> dict[str, float]:
    """The diagnostics of the last training row of ``run_dir/metrics.jsonl`` ({} if none)."""
    path = run_dir / "metrics.jsonl"
    row: dict = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record.get("kind") == "train":
                row = record
    return {k: row[k] for k in DIAGNOSTICS if k in row}


def aggregate(results: list[dict], variants: list[str]) -> dict:
    """Mean, std over seeds; difference to the baseline and whether it beats the seed noise."""
    table: dict = {}
    for variant in variants:
        runs = [r for r in results if r["variant"] == variant]
        table[variant] = {"seeds": sorted(r["seed"] for r in runs)}
        for label in SPLITS:
            for metric in METRICS:
                values = [r["splits"][label][metric] for r in runs if metric in r["splits"][label]]
                if values:
                    table[variant][f"{label}/{metric}"] = summarise(values)
        for name in DIAGNOSTICS:
            values = [r["diagnostics"][name] for r in runs if name in r.get("diagnostics", {})]
            if values:
                table[variant][f"training/{name}"] = summarise(values)
    base = table.get(BASELINE, {})
    for variant, row in table.items():
        if variant == BASELINE:
            continue
        for key, cell in row.items():
            if key == "seeds" or key.startswith("training/") or key not in base:
                continue
            b = base[key]
            diff = cell["mean"] - b["mean"]
            cell["diff"] = diff
            cell["p"] = welch_p(cell, b)
            cell["significant"] = bool(cell["p"] == cell["p"] and cell["p"] < 0.05)
    return table


def welch_p(a: dict, b: dict) -> float:
    """Two-sided p-value of Welch's t-test between two summarised samples (NaN if undefined)."""
    if a["n"] < 2 or b["n"] < 2 or (a["std"] == 0 and b["std"] == 0):
        return float("nan")
    from scipy import stats

    return float(stats.ttest_ind_from_stats(a["mean"], a["std"], a["n"], b["mean"], b["std"], b["n"],
                                            equal_var=False).pvalue)


def summarise(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def markdown(table: dict, shared: dict[str, str] | None = None) -> str:
    shared = shared or {}
    lines = []
    for label in SPLITS:
        lines.append(f"\n### {label} ({SPLITS[label]})\n")
        lines.append("| variant | seeds | " + " | ".join(METRICS) + " |")
        lines.append("|---|---|" + "---|" * len(METRICS))
        for variant, row in table.items():
            cells = []
            for metric in METRICS:
                cell = row.get(f"{label}/{metric}")
                if cell is None:
                    cells.append("–")
                    continue
                text = f"{cell['mean']:.1f} ± {cell['std']:.1f}"
                if "diff" in cell:
                    p = f", p={cell['p']:.2f}" if cell["p"] == cell["p"] else ""
                    text += f" ({cell['diff']:+.1f}{p}{'*' if cell['significant'] else ''})"
                cells.append(text)
            name = f"{variant} (= {shared[variant]})" if variant in shared else variant
            lines.append(f"| {name} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    lines.append("\nmean ± std over seeds; (difference to the baseline, Welch's t-test p over seeds; "
                 "* = p < 0.05, a difference beyond the seed noise)")
    rows = [(v, r) for v, r in table.items() if any(f"training/{n}" in r for n in DIAGNOSTICS)]
    if rows:
        lines.append("\n### anchor branch at the last training step\n")
        lines.append("| variant | " + " | ".join(DIAGNOSTICS) + " |")
        lines.append("|---|" + "---|" * len(DIAGNOSTICS))
        for variant, row in rows:
            cells = [f"{row[f'training/{n}']['mean']:.3g} ± {row[f'training/{n}']['std']:.2g}" if f"training/{n}" in row
                     else "–" for n in DIAGNOSTICS]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        lines.append("\nentropies in nats (uniform over K anchors: ln K); top share: fraction of a batch's captions "
                     "whose S_p peaks on the batch's most common anchor")
    return "\n".join(lines) + "\n"


def plot_gap(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in ("caption/CIDEr", "t2v/R@1") if any(f"in-domain/{m}" in row for row in table.values())]
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        names, gaps, errors = [], [], []
        for variant, row in table.items():
            a, b = row.get(f"in-domain/{metric}"), row.get(f"out-of-domain/{metric}")
            if a and b:
                names.append(variant)
                gaps.append(b["mean"] - a["mean"])
                errors.append(math.sqrt(a["std"] ** 2 + b["std"] ** 2))
        ax.bar(names, gaps, yerr=errors, capsize=4, color="tab:blue")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_title(f"{metric}: out-of-domain minus in-domain")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", nargs="+", default=["main"], choices=sorted(GRIDS))
    parser.add_argument("--variants", nargs="*", help="only these variants of the grid(s)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="optim.max_steps per run (default: the config's)")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--out", default="runs/ablate")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (threads are split between them)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers per run")
    parser.add_argument("--eval-max-videos", type=int, default=None,
                        help="evaluate on the first N videos of each split")
    parser.add_argument("--override", action="append", default=[], help="extra key=value for every run")
    parser.add_argument("--evaluate-run", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--manifest", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.evaluate_run:
        evaluate_run(args.evaluate_run, args.manifest, args.eval_max_videos or 0)
        return 0

    variants: dict[str, list[str]] = {}
    for grid in args.grid:
        for name, overrides in GRIDS[grid].items():
            if args.variants and name not in args.variants:
                continue
            variants.setdefault(name, overrides)
    # One run per distinct resolved model and seed; a variant that resolves like an earlier
    # one (K=55 is the default CALM, K=0 is the baseline) reads that run's results.
    # Runs are named after the first variant of all grids (in GRIDS order) that resolves
    # alike, so separate invocations into one --out share them too.
    model_name = base_config(args).model.name
    first_of_key: dict[str, tuple[str, list[str]]] = {}
    for grid in GRIDS.values():
        for name, overrides in grid.items():
            first_of_key.setdefault(model_key(model_name, overrides), (name, overrides))
    run_of = {name: first_of_key[model_key(model_name, overrides)] for name, overrides in variants.items()}
    runs = {run: overrides for run, overrides in run_of.values()}
    jobs = [(run, overrides, seed) for seed in args.seeds for run, overrides in runs.items()]
    threads = max(1, (os.cpu_count() or 1) // max(1, args.parallel))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    shared = {name: run for name, (run, _) in run_of.items() if name != run}
    print(f"{len(jobs)} runs ({len(variants)} variants x {len(args.seeds)} seeds"
          + (f"; {', '.join(f'{a} = {b}' for a, b in shared.items())}" if shared else "")
          + f"), {args.parallel} at a time -> {out}", flush=True)
    results = []
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = {pool.submit(train_and_evaluate, args, name, overrides, seed, threads): (name, seed)
                   for name, overrides, seed in jobs}
        for done, future in enumerate(futures, start=1):
            name, seed = futures[future]
            result = future.result()
            result.setdefault("variant", name)
            result.setdefault("seed", seed)
            result["diagnostics"] = last_training_row(out / run_name(name, seed))
            results.append(result)
            print(f"[{done}/{len(jobs)}] {run_name(name, seed)} done ({time.time() - started:.0f} s elapsed)",
                  flush=True)
    by_run = results
    results = [{**r, "variant": name} for name, (run, _) in run_of.items() for r in by_run if r["variant"] == run]
    table = aggregate(results, list(variants))
    run_seconds = sum(r.get("train_seconds", 0.0) for r in by_run)
    stem = "-".join(args.grid)
    table_json, table_md, plot_png = out / f"table-{stem}.json", out / f"table-{stem}.md", out / f"ood_gap-{stem}.png"
    table_json.write_text(json.dumps({"table": table, "wall_seconds": time.time() - started,
                                                "runs": len(by_run), "run_seconds_total": run_seconds,
                                                "grids": args.grid, "seeds": args.seeds, "steps": args.steps,
                                                "shared_runs": shared, "overrides": args.override}, indent=2) + "\n")
    text = markdown(table, shared)
    table_md.write_text(text)
    plot_gap(table, plot_png)
    print(text)
    print(f"wall time {time.time() - started:.0f} s ({len(by_run)} runs took {run_seconds:.0f} s together, "
          f"train + evaluate); table: {table_md}; plot: {plot_png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
