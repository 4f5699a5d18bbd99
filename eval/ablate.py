#!/usr/bin/env python
"""The CALM study: train and evaluate a grid of configurations, several seeds each.

    python eval/ablate.py --grid main --out runs/study                       # the embedded benchmark
    python eval/ablate.py --preset msrvtt --grid main --out runs/study_msrvtt  # the paper's scale

Each run trains ``recipes/train_caption.py`` with the preset's config plus the run's
overrides, then evaluates its model on the preset's test splits (``PRESETS``; ``--split``
names others): on the embedded benchmark the in-domain ``test`` and the three out-of-domain
splits (``test_ood``: both shifts; ``test_ood_visual``: domain-B rendering, domain-A wording;
``test_ood_text``: domain-A rendering, domain-B wording); at the paper's scale MSR-VTT's 1k-A
test and DiDeMo's test, the paper's cross-domain table. A reference row evaluates the
preset's pretrained towers zero-shot (mean-pooled frames, no training), since the
out-of-domain question is what fine-tuning keeps of them.

Runs go ``--parallel`` at a time (each with its share of the cores), and the runner resumes:
a run whose ``results.json`` holds every split is not repeated (one missing a split is only
evaluated), and an interrupted run resumes from its last checkpoint. ``--table-only`` tabulates
the runs finished so far (each row says its number of seeds) and trains nothing. ``--dry-run`` prints the
plan (runs, their configs, the splits) and checks every config without touching data.

The table (``table-<grids>.md`` and ``.json``, e.g. ``table-main.md``, so studies of other
grids into the same ``--out`` share runs, not tables) gives, per variant and split, the mean
and standard deviation over seeds of each metric, the difference to the baseline and Welch's
t-test p over the seeds, Holm-corrected across each split's table (every variant x metric
comparison of that split is one family); ``*`` marks a corrected p < 0.05. ``ood_gap-<grids>.png``
plots out-of-domain minus in-domain score per variant.
"""

from __future__ import annotations

import argparse
import copy
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
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "train_caption.py"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_benchmarks import SUITES, parse_bench  # noqa: E402  (eval/ is a folder of scripts)


class Preset(NamedTuple):
    """Where a study trains (a recipe config) and what it tests on: ``{label: (manifest, split)}``
    (manifest ``None``: the config's own)."""

    config: Path
    splits: dict[str, tuple[str | None, str]]


PRESETS = {
    # The embedded benchmark: calmcap-tiny on its pretrained `synth` towers (issue #11).
    "synth": Preset(REPO / "recipes" / "configs" / "synth_tiny.yaml",
                    {"in-domain": (None, "test"), "out-of-domain": (None, "test_ood"),
                     "ood-visual": (None, "test_ood_visual"), "ood-text": (None, "test_ood_text")}),
    # The paper's cross-domain table: calmcap-vitb32 from OpenAI's CLIP, trained on MSR-VTT
    # (Training-9K), tested on MSR-VTT 1k-A and on DiDeMo (paragraph protocol) unseen.
    "msrvtt": Preset(REPO / "recipes" / "configs" / "study_msrvtt_vitb32.yaml",
                     {"in-domain": (SUITES["msrvtt_9k"][0], "test"), "out-of-domain": (SUITES["didemo"][0], "test")}),
}
ZERO_SHOT = "zero-shot towers"

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
    # K anchors: the first K labels of the model's label set (calmcap-tiny: the pretraining
    # world's 55 labels, synth_world; calmcap-vitb32: Charades' 157); K=all is the default CALM.
    "anchors": {
        BASELINE: ["anchors.num_anchors=0"],
        "K=15": ["anchors.num_anchors=15"],
        "K=30": ["anchors.num_anchors=30"],
        "K=all": ["anchors.num_anchors=null"],
    },
    "labels": {
        BASELINE: ["alignment.variant=none"],
        "synth-world": ["anchors.label_set=synth_world"],
        "charades": ["anchors.label_set=charades_157"],
        "coco": ["anchors.label_set=coco_80"],
        "synth-concepts": ["anchors.label_set=synth_concepts"],
    },
}
# attr/all: the share of captions naming the video's shape, colour, size and action (manifests
# with ground truth only: the embedded benchmark).
METRICS = ["caption/CIDEr", "caption/BLEU-4", "attr/all", "t2v/R@1", "t2v/R@5", "v2t/R@1", "v2t/R@5"]
RETRIEVAL_METRICS = [m for m in METRICS if m.startswith(("t2v/", "v2t/"))]
# What the anchor branch looked like at the last logged training step (training.anchor_statistics):
# a text entropy near 0 with a top share near 1 means S_p collapsed onto one anchor.
DIAGNOSTICS = ["anchor/text_entropy", "anchor/text_top_share", "anchor/video_entropy", "loss/rec", "loss/kl",
               "loss/align"]


def run_name(variant: str, seed: int) -> str:
    return f"{variant.replace('=', '').replace('/', '-')}_seed{seed}"


def model_key(model_name: str, overrides: list[str]) -> str:
    """The resolved model configuration of a variant: variants that resolve alike share runs.

    Without the anchor branch (variant ``none`` or K=0) the anchor and alignment settings
    build nothing, so they are left out of the key; with ``S_p`` detached (the default) direct
    cross-entropy is direct KL.
    """
    from calmcap.config import get_model_config

    config = get_model_config(model_name, overrides)
    data = config.to_json()
    if not config.use_anchors:
        data.pop("anchors")
        data.pop("alignment")
    elif config.alignment.detach_text_dist and config.alignment.variant == "ce":
        # With S_p detached, -sum S_p log V_p and KL(S_p || V_p) differ by S_p's entropy, a
        # constant: the same gradients, bit for bit (measured: identical runs). One run serves both.
        data["alignment"]["variant"] = "kl"
    return json.dumps(data, sort_keys=True)


def base_config(args: argparse.Namespace):
    """The recipe config every run starts from: ``--config`` with the ``--override`` items."""
    from calmcap.train_config import load_train_config

    return load_train_config(args.config, args.override)


def test_splits(args: argparse.Namespace) -> dict[str, tuple[str, str]]:
    """``{label: (manifest path, split)}``: the preset's, or ``--split`` items; relative to the repo."""
    splits = dict(PRESETS[args.preset].splits)
    if args.split:
        splits = {label: (manifest, names[0]) for label, manifest, names in args.split}
    default = base_config(args).data.manifest
    out = {}
    for label, (manifest, split) in splits.items():
        path = Path(manifest or default)
        out[label] = (str(path if path.is_absolute() else REPO / path), split)
    return out


def train_command(args: argparse.Namespace, out: Path, overrides: list[str], seed: int) -> list[str]:
    """The recipe invocation of one run."""
    synth = ["data.synth.workers=1"] if base_config(args).data.synth.enabled else []
    command = [
        sys.executable, str(RECIPE), "--config", str(args.config), "--resume", "latest",
        f"output_dir={out}", f"seed={seed}", f"model.overrides={json.dumps(overrides)}",
        f"data.num_workers={args.num_workers}", *synth, *args.override,
    ]
    if args.steps:
        command.append(f"optim.max_steps={args.steps}")
    return command


def _env(threads: int) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")


def _last_line(log: Path) -> str:
    """The log's last non-empty line (a traceback's final line names the error)."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][-300:] if lines else "no output"


def _has_every_split(path: Path, splits: dict) -> bool:
    return path.is_file() and set(splits) <= set(json.loads(path.read_text()).get("splits", {}))


def train_and_evaluate(args: argparse.Namespace, variant: str, overrides: list[str], seed: int, threads: int) -> dict:
    """One run: train (resuming if interrupted), evaluate every test split, write results.json.

    A finished run is not repeated; one whose results lack a split (a split added since) is
    only evaluated on the missing ones.
    """
    out = Path(args.out) / run_name(variant, seed)
    results_path = out / "results.json"
    splits = test_splits(args)
    if _has_every_split(results_path, splits):
        return json.loads(results_path.read_text())
    started = time.time()
    log = out.parent / f"{out.name}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        if not (out / "summary.json").is_file():
            subprocess.run(train_command(args, out, overrides, seed), env=_env(threads), stdout=handle,
                           stderr=subprocess.STDOUT, check=True, cwd=REPO)
        subprocess.run(
            [sys.executable, __file__, "--evaluate-run", str(out), "--splits-json", json.dumps(splits),
             "--eval-max-videos", str(args.eval_max_videos or 0)],
            env=_env(threads), stdout=handle, stderr=subprocess.STDOUT, check=True, cwd=REPO,
        )
    result = json.loads(results_path.read_text())
    result.update(variant=variant, seed=seed, overrides=overrides)
    result["train_seconds"] = result.get("train_seconds", 0.0) + time.time() - started
    results_path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _split_dataset(manifest: str, split: str, num_frames: int, image_size: int, max_videos: int):
    from calmcap.data.dataset import VideoCaptionDataset
    from calmcap.data.manifest import read_manifest

    entries = read_manifest(manifest, split)[: max_videos or None]
    return VideoCaptionDataset(manifest, split, num_frames, image_size, mode="videos", entries=entries)


def evaluate_run(run_dir: Path, splits: dict[str, tuple[str, str]], max_videos: int) -> None:
    """Evaluate ``run_dir/model`` on the splits its ``results.json`` lacks; write it."""
    import torch

    from calmcap.evaluation import evaluate
    from calmcap.models.calm import CALMModel
    from calmcap.train_config import load_train_config

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    path = run_dir / "results.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}  # re-evaluation keeps variant, seed, times
    results = dict(previous.get("splits", {}))
    model = CALMModel.from_pretrained(run_dir / "model")
    # Decode as the run's own validation did (the embedded benchmark needs 40 pieces, not 20).
    decode = load_train_config(run_dir / "config.yaml").eval.decode
    for label, (manifest, split) in splits.items():
        if label in results:
            continue
        dataset = _split_dataset(manifest, split, model.config.num_frames, model.config.image_size, max_videos)
        result = evaluate(model, dataset, batch_size=32, decode=decode, meteor=False)
        results[label] = {**result.metrics, "videos": result.counts["videos"], "split": split}
    summary = json.loads((run_dir / "summary.json").read_text())
    path.write_text(json.dumps({**previous, "splits": results, "training": summary,
                                "decode": dataclasses.asdict(decode)}, indent=2) + "\n")


def evaluate_zero_shot(args: argparse.Namespace, threads: int, *, run: bool = True) -> dict | None:
    """The reference row: the preset's pretrained towers, untrained, ranking each split (mean-pooled frames).

    Measured once and read back afterwards; with ``run=False`` only read back (``None`` if not measured).
    """
    out = Path(args.out) / "zero-shot"
    path = out / "results.json"
    splits = test_splits(args)
    if _has_every_split(path, splits):
        return json.loads(path.read_text())
    if not run:
        return None
    out.mkdir(parents=True, exist_ok=True)
    with (out.parent / "zero-shot.log").open("a") as handle:
        subprocess.run([sys.executable, __file__, "--zero-shot-run", str(out), "--splits-json", json.dumps(splits),
                        "--eval-max-videos", str(args.eval_max_videos or 0), "--config", str(args.config),
                        *[f"--override={o}" for o in args.override]],
                       env=_env(threads), stdout=handle, stderr=subprocess.STDOUT, check=True, cwd=REPO)
    return json.loads(path.read_text())


def zero_shot_run(args: argparse.Namespace, out: Path, splits: dict[str, tuple[str, str]]) -> None:
    import torch

    from calmcap.config import get_model_config
    from calmcap.models.encoders import build_clip, clip_text_tokenizer
    from calmcap.zeroshot import zero_shot

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    recipe = base_config(args)
    config = get_model_config(recipe.model.name, recipe.model.overrides)
    clip, tokenize = build_clip(config.clip, config.image_size), clip_text_tokenizer(config.clip.arch)
    results = {}
    for label, (manifest, split) in splits.items():
        dataset = _split_dataset(manifest, split, config.num_frames, config.image_size, args.eval_max_videos or 0)
        result = zero_shot(clip, tokenize, dataset, attributes=())
        results[label] = {**result.retrieval, "videos": result.num_videos, "split": split}
    (out / "results.json").write_text(json.dumps({"variant": ZERO_SHOT, "towers": dataclasses.asdict(config.clip),
                                                  "splits": results}, indent=2) + "\n")


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


def aggregate(results: list[dict], variants: list[str], labels: list[str],
              shared: dict[str, str] | None = None) -> dict:
    """Mean, std over seeds; difference to the baseline, Welch's p and its Holm correction per split.

    Variants that train the same runs (``shared``: name -> the run it reuses, e.g. K=all and
    synth-world both -> calm-vae) make the same comparisons: the family counts them once, and
    every one of them shows the corrected p-values of the first.
    """
    shared = shared or {}
    table: dict = {}
    for variant in variants:
        runs = [r for r in results if r["variant"] == variant]
        table[variant] = {"seeds": sorted(r["seed"] for r in runs)}
        for label in labels:
            for metric in METRICS:
                values = [r["splits"][label][metric] for r in runs if metric in r["splits"].get(label, {})]
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
            cell["diff"] = cell["mean"] - b["mean"]
            cell["p"] = welch_p(cell, b)
            cell["ci95"] = welch_interval(cell, b)
    first_of_run: dict[str, str] = {}  # run -> the first variant of the table that trains it
    for variant in table:
        first_of_run.setdefault(shared.get(variant, variant), variant)
    counted = set(first_of_run.values())
    for label in labels:  # one family per split: every distinct variant x metric compared with the baseline
        cells = [cell for variant, row in table.items() if variant in counted for key, cell in row.items()
                 if key.startswith(f"{label}/") and "p" in cell]
        for cell, adjusted in zip(cells, holm([c["p"] for c in cells]), strict=True):
            cell["p_holm"] = adjusted
            cell["significant"] = bool(adjusted == adjusted and adjusted < 0.05)
    for variant in table:
        if variant not in counted:
            table[variant] = copy.deepcopy(table[first_of_run[shared.get(variant, variant)]])
    return table


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (statsmodels); NaN (an undefined test) stays NaN, uncounted."""
    defined = [i for i, p in enumerate(p_values) if p == p]
    adjusted = [float("nan")] * len(p_values)
    if defined:
        from statsmodels.stats.multitest import multipletests

        corrected = multipletests([p_values[i] for i in defined], method="holm")[1]
        for i, value in zip(defined, corrected, strict=True):
            adjusted[i] = float(value)
    return adjusted


def _welch(a: dict, b: dict) -> tuple[float, float] | None:
    """Standard error and Welch-Satterthwaite degrees of freedom of mean(a) - mean(b); None if undefined."""
    if a["n"] < 2 or b["n"] < 2 or (a["std"] == 0 and b["std"] == 0):
        return None
    va, vb = a["std"] ** 2 / a["n"], b["std"] ** 2 / b["n"]
    return (va + vb) ** 0.5, (va + vb) ** 2 / (va**2 / (a["n"] - 1) + vb**2 / (b["n"] - 1))


def welch_p(a: dict, b: dict) -> float:
    """Two-sided p-value of Welch's t-test between two summarised samples (NaN if undefined)."""
    welch = _welch(a, b)
    if welch is None:
        return float("nan")
    from scipy import stats

    se, dof = welch
    return float(2 * stats.t.sf(abs(a["mean"] - b["mean"]) / se, dof))


def welch_interval(a: dict, b: dict, level: float = 0.95) -> list[float]:
    """Welch's confidence interval for mean(a) - mean(b), per comparison (NaNs if undefined)."""
    welch = _welch(a, b)
    if welch is None:
        return [float("nan"), float("nan")]
    from scipy import stats

    se, dof = welch
    half = float(stats.t.ppf(0.5 + level / 2, dof)) * se
    diff = a["mean"] - b["mean"]
    return [diff - half, diff + half]


def summarise(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def markdown(table: dict, splits: dict[str, tuple[str, str]], shared: dict[str, str] | None = None,
             zero_shot: dict | None = None) -> str:
    shared = shared or {}
    lines = []
    for label, (manifest, split) in splits.items():
        metrics = [m for m in METRICS if any(f"{label}/{m}" in row for row in table.values())]
        lines.append(f"\n### {label} ({Path(manifest).parent.name}: {split})\n")
        lines.append("| variant | seeds | " + " | ".join(metrics) + " |")
        lines.append("|---|---|" + "---|" * len(metrics))
        for variant, row in table.items():
            cells = []
            for metric in metrics:
                cell = row.get(f"{label}/{metric}")
                if cell is None:
                    cells.append("–")
                    continue
                text = f"{cell['mean']:.1f} ± {cell['std']:.1f}"
                if "diff" in cell:
                    p = f", p={cell['p_holm']:.2f}" if cell.get("p_holm") == cell.get("p_holm") else ""
                    text += f" ({cell['diff']:+.1f}{p}{'*' if cell.get('significant') else ''})"
                cells.append(text)
            name = f"{variant} (= {shared[variant]})" if variant in shared else variant
            lines.append(f"| {name} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
        if zero_shot and label in zero_shot.get("splits", {}):
            scores = zero_shot["splits"][label]
            cells = [f"{scores[m]:.1f}" if m in scores else "–" for m in metrics]
            lines.append(f"| *{ZERO_SHOT} (reference)* | – | " + " | ".join(cells) + " |")
    lines.append("\nmean ± std over seeds; (difference to the baseline, Welch's t-test p over seeds, Holm-corrected "
                 "over the split's table; * = corrected p < 0.05, a difference beyond the seed noise; the .json "
                 "gives each difference's uncorrected p and Welch 95 % interval, `ci95`). "
                 f"*{ZERO_SHOT}*: the pretrained towers before any training, mean-pooled frames (retrieval only)")
    rows = [(v, r) for v, r in table.items() if any(f"training/{n}" in r for n in DIAGNOSTICS)]
    if rows:
        lines.append("\n### anchor branch at the last training step\n")
        lines.append("| variant | " + " | ".join(DIAGNOSTICS) + " |")
        lines.append("|---|" + "---|" * len(DIAGNOSTICS))
        for variant, row in rows:
            cells = [f"{row[f'training/{n}']['mean']:.3g} ± {row[f'training/{n}']['std']:.2g}" if f"training/{n}" in row
                     else "–" for n in DIAGNOSTICS]
            name = f"{variant} (= {shared[variant]})" if variant in shared else variant
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("\nentropies in nats (uniform over K anchors: ln K); top share: fraction of a batch's captions "
                     "whose S_p peaks on the batch's most common anchor (near 1: S_p collapsed onto one anchor)")
    return "\n".join(lines) + "\n"


SCORE_PLOT_METRICS = ["caption/CIDEr", "attr/all", "t2v/R@1", "v2t/R@1"]


def plot_scores(results: list[dict], variants: list[str], labels: list[str], path: Path,
                zero_shot: dict | None = None) -> None:
    """Every seed's score as a dot and the mean as a bar, per variant and split (one panel per metric).

    The zero-shot towers, where measured, are a dashed line per split in the retrieval panels.
    """
    import matplotlib

    from calmcap.reports import new_figure

    metrics = [m for m in SCORE_PLOT_METRICS
               if any(m in r["splits"].get(label, {}) for r in results for label in labels)]
    if not metrics:
        return
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    width = 0.8 / len(labels)
    fig = new_figure(max(8.0, 0.7 * len(variants) * len(labels)), 3.2 * len(metrics))
    axes = fig.subplots(len(metrics), 1, squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics, strict=True):
        for i, label in enumerate(labels):
            colour = colours[i % len(colours)]
            for x, variant in enumerate(variants):
                values = [r["splits"][label][metric] for r in results
                          if r["variant"] == variant and metric in r["splits"].get(label, {})]
                if not values:
                    continue
                centre = x + (i - (len(labels) - 1) / 2) * width
                ax.bar(centre, statistics.fmean(values), width * 0.9, color=colour, alpha=0.35,
                       label=label if x == 0 else None)
                ax.scatter([centre] * len(values), values, color=colour, s=12, zorder=3)
            reference = (zero_shot or {}).get("splits", {}).get(label, {}).get(metric)
            if reference is not None:
                ax.axhline(reference, color=colour, linestyle="--", linewidth=1)
        ax.set_xticks(range(len(variants)), variants, rotation=20)
        ax.set_ylabel(metric)
    fig.suptitle("each seed (dots), their mean (bars); dashed: the zero-shot towers", x=0.01, ha="left")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="upper right", ncol=len(labels), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=100)


def plot_gap(table: dict, labels: list[str], path: Path) -> None:
    """Each other split's score minus the first (in-domain) one's, per variant (one panel per metric)."""
    from calmcap.reports import new_figure

    home, shifted = labels[0], labels[1:]
    metrics = [m for m in ("caption/CIDEr", "t2v/R@1") if any(f"{home}/{m}" in row for row in table.values())]
    fig = new_figure(6 * len(metrics), 4)
    axes = fig.subplots(1, len(metrics), squeeze=False)
    width = 0.8 / max(1, len(shifted))
    for ax, metric in zip(axes[0], metrics, strict=True):
        names = [v for v, row in table.items() if f"{home}/{metric}" in row]
        for i, label in enumerate(shifted):
            gaps, errors = [], []
            for variant in names:
                a, b = table[variant][f"{home}/{metric}"], table[variant].get(f"{label}/{metric}")
                gaps.append(b["mean"] - a["mean"] if b else 0.0)
                errors.append(math.sqrt(a["std"] ** 2 + b["std"] ** 2) if b else 0.0)
            ax.bar([x + i * width for x in range(len(names))], gaps, width, yerr=errors, capsize=3, label=label)
        ax.set_xticks([x + width * (len(shifted) - 1) / 2 for x in range(len(names))], names, rotation=30)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_title(f"{metric}: minus {home}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plan(args: argparse.Namespace) -> tuple[dict, dict, list[tuple[str, list[str], int]]]:
    """(variants {name: overrides}, run_of {variant: (run, overrides)}, jobs [(run, overrides, seed)]).

    One run per distinct resolved model and seed; a variant that resolves like an earlier one
    (K=all is the default CALM, K=0 is the baseline) reads that run's results. Runs are named
    after the first variant of all grids (in GRIDS order) that resolves alike, so separate
    invocations into one --out share them too.
    """
    variants: dict[str, list[str]] = {}
    for grid in args.grid:
        for name, overrides in GRIDS[grid].items():
            if args.variants and name not in args.variants:
                continue
            variants.setdefault(name, overrides)
    model_name = base_config(args).model.name
    first_of_key: dict[str, tuple[str, list[str]]] = {}
    for grid in GRIDS.values():
        for name, overrides in grid.items():
            first_of_key.setdefault(model_key(model_name, overrides), (name, overrides))
    run_of = {name: first_of_key[model_key(model_name, overrides)] for name, overrides in variants.items()}
    runs = {run: overrides for run, overrides in run_of.values()}
    jobs = [(run, overrides, seed) for seed in args.seeds for run, overrides in runs.items()]
    return variants, run_of, jobs


def dry_run(args: argparse.Namespace) -> int:
    """Print the plan and check each run's recipe config (with its model) without touching data."""
    from calmcap.config import get_model_config
    from calmcap.train_config import load_train_config

    variants, run_of, jobs = plan(args)
    print(f"preset {args.preset}: {args.config}")
    for label, (manifest, split) in test_splits(args).items():
        print(f"  test {label}: {manifest} split {split}")
    for run, overrides, seed in jobs:
        out = Path(args.out) / run_name(run, seed)
        command = train_command(args, out, overrides, seed)
        cfg = load_train_config(args.config, command[command.index("--resume") + 2:])
        get_model_config(cfg.model.name, cfg.model.overrides)  # validates the run's model
        print(f"{run_name(run, seed)}: {' '.join(command[1:])}")
    print(f"{len(jobs)} runs for {len(variants)} variants x {len(args.seeds)} seeds, plus the zero-shot reference")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="synth",
                        help="recipe config and test splits (default: %(default)s)")
    parser.add_argument("--grid", nargs="+", default=["main"], choices=sorted(GRIDS))
    parser.add_argument("--variants", nargs="*", help="only these variants of the grid(s)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=None, help="optim.max_steps per run (default: the config's)")
    parser.add_argument("--config", default=None, help="recipe config (default: the preset's)")
    parser.add_argument("--split", action="append", type=parse_bench, metavar="LABEL=MANIFEST:SPLIT",
                        help="test on these, not the preset's splits (repeatable; the first is the in-domain one)")
    parser.add_argument("--out", default="runs/ablate")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (threads are split between them)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers per run")
    parser.add_argument("--eval-max-videos", type=int, default=None,
                        help="evaluate on the first N videos of each split")
    parser.add_argument("--override", action="append", default=[], help="extra key=value for every run")
    parser.add_argument("--no-zero-shot", action="store_true", help="skip the zero-shot reference row")
    parser.add_argument("--dry-run", action="store_true", help="print the runs and check their configs; train nothing")
    parser.add_argument("--table-only", action="store_true",
                        help="tabulate the finished runs (the seeds so far); train and evaluate nothing")
    parser.add_argument("--evaluate-run", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--zero-shot-run", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--splits-json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.config = args.config or str(PRESETS[args.preset].config)
    if args.evaluate_run:
        evaluate_run(args.evaluate_run, json.loads(args.splits_json), args.eval_max_videos or 0)
        return 0
    if args.zero_shot_run:
        zero_shot_run(args, args.zero_shot_run, json.loads(args.splits_json))
        return 0
    if args.dry_run:
        return dry_run(args)

    variants, run_of, jobs = plan(args)
    splits = test_splits(args)
    threads = max(1, (os.cpu_count() or 1) // max(1, args.parallel))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    shared = {name: run for name, (run, _) in run_of.items() if name != run}
    if args.table_only:
        unfinished = [(name, seed) for name, _, seed in jobs
                      if not _has_every_split(out / run_name(name, seed) / "results.json", splits)]
        if unfinished:
            print("not finished, left out of the table: " + ", ".join(run_name(*job) for job in unfinished), flush=True)
        jobs = [job for job in jobs if (job[0], job[2]) not in unfinished]
        if not jobs:
            raise SystemExit(f"ablate.py: no finished run in {out} to tabulate")
    print(f"{len(jobs)} runs ({len(variants)} variants x {len(args.seeds)} seeds"
          + (f"; {', '.join(f'{a} = {b}' for a, b in shared.items())}" if shared else "")
          + f"), {args.parallel} at a time -> {out}", flush=True)
    zero_shot = None if args.no_zero_shot else evaluate_zero_shot(args, threads * max(1, args.parallel),
                                                                  run=not args.table_only)
    results, failed = [], []
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = {pool.submit(train_and_evaluate, args, name, overrides, seed, threads): (name, seed)
                   for name, overrides, seed in jobs}
        for done, future in enumerate(futures, start=1):
            name, seed = futures[future]
            try:
                result = future.result()
            except subprocess.CalledProcessError as error:  # one run's failure costs that run, not the grid
                log = out / f"{run_name(name, seed)}.log"
                failed.append(run_name(name, seed))
                print(f"[{done}/{len(jobs)}] {run_name(name, seed)} FAILED (exit {error.returncode}): "
                      f"{_last_line(log)} (log: {log})", flush=True)
                continue
            result.setdefault("variant", name)
            result.setdefault("seed", seed)
            result["diagnostics"] = last_training_row(out / run_name(name, seed))
            results.append(result)
            print(f"[{done}/{len(jobs)}] {run_name(name, seed)} done ({time.time() - started:.0f} s elapsed)",
                  flush=True)
    if not results:
        raise SystemExit(f"ablate.py: every run failed ({', '.join(failed)}); see their logs in {out}")
    by_run = results
    results = [{**r, "variant": name} for name, (run, _) in run_of.items() for r in by_run if r["variant"] == run]
    variants = {name: v for name, v in variants.items() if any(r["variant"] == name for r in results)}
    table = aggregate(results, list(variants), list(splits), shared)
    run_seconds = sum(r.get("train_seconds", 0.0) for r in by_run)
    stem = "-".join(args.grid)
    table_json, table_md, plot_png = out / f"table-{stem}.json", out / f"table-{stem}.md", out / f"ood_gap-{stem}.png"
    table_json.write_text(json.dumps({"table": table, "zero_shot": zero_shot, "splits": splits,
                                      "wall_seconds": time.time() - started, "runs": len(by_run),
                                      "run_seconds_total": run_seconds, "preset": args.preset,
                                      "config": args.config, "grids": args.grid, "seeds": args.seeds,
                                      "steps": args.steps, "shared_runs": shared, "overrides": args.override},
                                     indent=2) + "\n")
    text = markdown(table, splits, shared, zero_shot)
    table_md.write_text(text)
    plot_gap(table, list(splits), plot_png)
    scores_png = out / f"scores-{stem}.png"
    plot_scores(results, list(variants), list(splits), scores_png, zero_shot)
    print(text)
    print(f"wall time {time.time() - started:.0f} s ({len(by_run)} runs took {run_seconds:.0f} s together, "
          f"train + evaluate); table: {table_md}; plots: {plot_png}, {scores_png}")
    if failed:
        print(f"ablate.py: {len(failed)} of {len(jobs)} runs failed, left out of the table: {', '.join(failed)}; "
              "fix the cause and run the same command again (finished runs are kept)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
