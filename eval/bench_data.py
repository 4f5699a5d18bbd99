"""Benchmark: what the frames and features caches buy over decoding video, on the embedded benchmark.

Generates the embedded benchmark's train split (``calmcap.data.synth.generate_benchmark``; 96 px,
24 frames at 10 fps, H.264) into ``--data-dir`` (reused when it is already there), builds the
frames cache (``cache_frames``) and a features cache (``cache_features``) of calmcap-tiny's
random-initialised image tower, then measures, side by side in one process:

(a) **DataLoader throughput** (clips/s) over one epoch of the train split:
    ``VideoCaptionDataset(mode="one_per_video", train=True)`` + ``Collator`` (CLIP tokens and
    caption tokens), batch ``--batch-size``, with ``num_workers`` 0 and 2, reading from
    decoded video, from the frames cache, and from the features cache. Worker start-up is
    included (a fresh DataLoader iterator per epoch, as the recipes use it). The main process
    runs with 1 torch thread here, as a DataLoader worker does: on a 2-core machine shared with
    other jobs, 2 threads make the small per-clip tensor ops several times slower.
(b) **One training epoch with a frozen image tower** of calmcap-tiny (``model.clip.visual``
    frozen; text tower, fusion, anchors, VAE and caption decoder trained): forward +
    ``CALMLoss`` + backward + AdamW step per batch, (1) decoding video and running the tower
    each step (1 and 2 DataLoader workers; the faster is the baseline) and (2) from cached
    features (0 workers). Same seed, same model init, same batch size. The ratio of the wall
    times is the speed-up of the features cache; the time to build the caches is reported
    apart (it is paid once). With calmcap-tiny the image tower is a small part of a step, so
    the ratio mostly measures decoding; with ViT-B/32 at 224 px (docs/DESIGN.md section 4: ~0.65 s
    per 12 frames) the tower dominates and the ratio grows accordingly.

Prints a Markdown table and writes JSON with ``--out``:

    python eval/bench_data.py --num-train 600 --out bench_data.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the network
# Before torch is imported: OpenMP threads that spin while waiting make 2-thread torch several
# times slower on a 2-core machine shared with other jobs (measured: 0.6 s vs 5-7 s per step).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-train", type=int, default=600, help="train videos to generate (default: %(default)s)")
    parser.add_argument("--data-dir", default=None,
                        help="benchmark folder, reused when present (default: <tmp>/calmcap-bench-data-<num-train>)")
    parser.add_argument("--batch-size", type=int, default=64, help="clips per batch (default: %(default)s)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                        help="DataLoader workers to compare (default: 0 2)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the training loop; 1 leaves the other core to the decoding workers "
                             "and measured steadier than 2 on a shared 2-core machine (default: %(default)s)")
    parser.add_argument("--loader-threads", type=int, default=1,
                        help="torch threads of the main process in part (a), as in a DataLoader worker "
                             "(default: %(default)s)")
    parser.add_argument("--train-workers-decode", type=int, nargs="+", default=[1, 2],
                        help="DataLoader workers of the decode-video training epochs; the fastest is the baseline "
                             "(default: 1 2)")
    parser.add_argument("--train-workers-features", type=int, default=0,
                        help="DataLoader workers of the cached-features training epoch (default: %(default)s)")
    parser.add_argument("--skip-loader", action="store_true", help="skip part (a)")
    parser.add_argument("--skip-train", action="store_true", help="skip part (b)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="calmcap-tiny",
                        help="architecture whose frozen image tower is timed, e.g. calmcap-vitb32 (random weights)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Set-up
# ---------------------------------------------------------------------------------------------


def ensure_benchmark(data_dir: Path, num_train: int, seed: int) -> tuple[Path, float | None]:
    """The benchmark's manifest, generated when absent; returns (manifest, seconds or None if reused)."""
    from calmcap.data.synth import generate_benchmark

    manifest = data_dir / "manifest.jsonl"
    info = data_dir / "benchmark.json"
    if manifest.is_file() and info.is_file():
        meta = json.loads(info.read_text())
        if meta.get("seed") == seed and meta["splits"]["train"]["num_videos"] == num_train:
            return manifest, None
    start = time.perf_counter()
    generate_benchmark(data_dir, seed=seed, num_train=num_train, num_val=0, num_test=0, num_test_ood=0,
                       num_test_ood_visual=0, num_test_ood_text=0, workers=2,
                       progress=False, overwrite=True)
    return manifest, time.perf_counter() - start


def build_model(tokenizer: Any, seed: int, name: str = "calmcap-tiny") -> Any:
    import torch

    from calmcap.config import get_model_config
    from calmcap.models.calm import CALMModel

    torch.manual_seed(seed)
    # Random weights: timing does not depend on them (and nothing is downloaded).
    model = CALMModel.create(get_model_config(name, ["clip.pretrained=null"]), tokenizer)
    model.clip.visual.requires_grad_(False)  # the frozen image tower
    return model


def make_loader(
    manifest: Path, model: Any, tokenizer: Any, source: Any, batch_size: int, workers: int, seed: int
) -> Any:
    import torch
    from torch.utils.data import DataLoader

    from calmcap.data.dataset import Collator, VideoCaptionDataset
    from calmcap.models.encoders import clip_text_tokenizer

    dataset = VideoCaptionDataset(manifest, "train", model.config.num_frames, model.config.image_size,
                                  mode="one_per_video", train=True, seed=seed, source=source)
    collate = Collator(clip_text_tokenizer(model.config.clip.arch), tokenizer, max_caption_length=24)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=False, num_workers=workers,
                      collate_fn=collate, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


def time_loader(loader: Any) -> dict[str, float]:
    """One epoch through a DataLoader (worker start-up included)."""
    start = time.perf_counter()
    clips = 0
    first_batch = None
    for batch in loader:
        if first_batch is None:
            first_batch = time.perf_counter() - start
        clips += len(batch["video_index"])
    seconds = time.perf_counter() - start
    return {"clips": clips, "seconds": round(seconds, 3), "clips_per_second": round(clips / seconds, 1),
            "first_batch_seconds": round(first_batch or 0.0, 3)}


def train_epoch(model: Any, loader: Any) -> dict[str, float]:
    """forward + CALMLoss + backward + AdamW step for every batch of one epoch."""
    import torch

    from calmcap.losses import LOSS_TOTAL, CALMLoss

    loss_fn = CALMLoss(variant=model.variant, gather=False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.05)
    model.train()
    start = time.perf_counter()
    steps = clips = 0
    losses = []
    for batch in loader:
        outputs = model(batch)
        loss = loss_fn(outputs)[LOSS_TOTAL]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
        clips += len(batch["video_index"])
        losses.append(float(loss.detach()))
    seconds = time.perf_counter() - start
    return {"steps": steps, "clips": clips, "seconds": round(seconds, 2),
            "seconds_per_step": round(seconds / max(steps, 1), 3), "clips_per_second": round(clips / seconds, 1),
            "first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4)}


def tower_seconds(model: Any, batch_size: int, repeats: int = 3) -> float:
    """Median time of the image tower alone (no grad) on one batch of random clips."""
    import statistics

    import torch

    video = torch.randn(batch_size, model.config.num_frames, 3, model.config.image_size, model.config.image_size)
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            model.encode_frames(video)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def markdown(results: dict[str, Any]) -> str:
    lines = []
    setup = results["setup"]
    lines.append(f"Embedded benchmark train split: {setup['num_train']} videos ({setup['video']}), {setup['model']} "
                 f"({setup['num_frames']} frames at {setup['image_size']} px), batch {setup['batch_size']}, "
                 f"{setup['cpus']} CPUs; torch threads: {setup['loader_threads']} in (a), {setup['threads']} in (b).")
    lines.append("")
    if "loader" in results:
        lines.append("(a) DataLoader throughput, one epoch (VideoCaptionDataset + Collator)")
        lines.append("")
        lines.append("| source | num_workers | clips/s | epoch (s) |")
        lines.append("|---|---:|---:|---:|")
        for row in results["loader"]:
            lines.append(f"| {row['source']} | {row['num_workers']} | {row['clips_per_second']:.1f} "
                         f"| {row['seconds']:.2f} |")
        lines.append("")
    if "train" in results:
        t = results["train"]
        lines.append("(b) One training epoch, frozen image tower (forward + CALMLoss + backward + AdamW)")
        lines.append("")
        lines.append("| input | num_workers | steps | epoch (s) | s/step | clips/s | first loss | last loss |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for row in t["runs"]:
            label = "decode video + run tower" if row["input"] == "decode" else "cached features"
            lines.append(f"| {label} | {row['num_workers']} | {row['steps']} | {row['seconds']:.2f} | "
                         f"{row['seconds_per_step']:.3f} | {row['clips_per_second']:.1f} | {row['first_loss']:.3f} | "
                         f"{row['last_loss']:.3f} |")
        lines.append("")
        lines.append(f"Speed-up of cached features over the fastest decoding run: **{t['speedup']:.1f}x** per epoch "
                     f"(image tower alone, no grad, one batch of {setup['batch_size']} clips: "
                     f"{t['tower_seconds_per_batch']:.3f} s).")
        lines.append("")
    c = results["caches"]
    lines.append(f"One-off cost: frames cache {c['frames_seconds']:.1f} s (2 workers), features cache "
                 f"{c['features_seconds']:.1f} s (from the frames cache); "
                 f"{c['frames_mib']:.1f} MiB of frames, {c['features_mib']:.2f} MiB of features.")
    return "\n".join(lines)


def _dir_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*.npy")) / 2**20


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    import torch

    from calmcap.data.dataset import VideoSource
    from calmcap.data.feature_cache import cache_features
    from calmcap.data.frame_cache import cache_frames
    from calmcap.data.manifest import read_manifest
    from calmcap.tokenizer import CaptionTokenizer

    torch.set_num_threads(args.threads)
    if args.data_dir:
        data_dir = Path(args.data_dir)
    else:
        data_dir = Path(tempfile.gettempdir()) / f"calmcap-bench-data-{args.num_train}"
    total_start = time.perf_counter()
    manifest, synth_seconds = ensure_benchmark(data_dir, args.num_train, args.seed)
    made = f"generated in {synth_seconds:.1f} s" if synth_seconds else "reused"
    print(f"benchmark: {manifest} ({made})", file=sys.stderr)
    entries = read_manifest(manifest, "train")
    tokenizer = CaptionTokenizer.train([c for e in entries for c in e.captions], vocab_size=1000)
    model = build_model(tokenizer, args.seed, args.model)

    # Fresh caches each run, so their build time is measured.
    cache_dir = Path(tempfile.mkdtemp(prefix="calmcap-bench-cache-"))
    start = time.perf_counter()
    cache_frames(manifest, cache_dir, model.config.image_size, splits="train", workers=2, progress=False)
    frames_seconds = time.perf_counter() - start
    start = time.perf_counter()
    cache_features(model, manifest, cache_dir, splits="train", progress=False)
    features_seconds = time.perf_counter() - start

    from calmcap.data.synth import DEFAULT_FPS, DEFAULT_NUM_FRAMES, DEFAULT_SIZE

    results: dict[str, Any] = {
        "setup": {
            "num_train": len(entries), "model": args.model, "batch_size": args.batch_size, "threads": args.threads,
            "loader_threads": args.loader_threads,
            "cpus": os.cpu_count(), "num_frames": model.config.num_frames, "image_size": model.config.image_size,
            "video": f"{DEFAULT_SIZE}x{DEFAULT_SIZE}, {DEFAULT_NUM_FRAMES} frames at {DEFAULT_FPS:g} fps, H.264",
            "python": platform.python_version(), "torch": torch.__version__, "data_dir": str(data_dir),
            "synth_seconds": None if synth_seconds is None else round(synth_seconds, 2),
        },
        "caches": {"frames_seconds": round(frames_seconds, 2), "features_seconds": round(features_seconds, 2),
                   "frames_mib": round(_dir_mib(cache_dir / "frames"), 2),
                   "features_mib": round(_dir_mib(cache_dir / "features"), 3)},
    }
    sources = {
        "decode video": VideoSource(),
        "frames cache": VideoSource(frame_cache=str(cache_dir)),
        "features cache": VideoSource(feature_cache=str(cache_dir)),
    }

    if not args.skip_loader:
        torch.set_num_threads(args.loader_threads)
        rows = []
        for name, source in sources.items():
            for workers in args.workers:
                loader = make_loader(manifest, model, tokenizer, source, args.batch_size, workers, args.seed)
                row = {"source": name, "num_workers": workers, **time_loader(loader)}
                print(f"loader {name:<15} workers={workers}: {row['clips_per_second']:.1f} clips/s", file=sys.stderr)
                rows.append(row)
        results["loader"] = rows

    if not args.skip_train:
        torch.set_num_threads(args.threads)
        runs = []
        plan = [("decode", w) for w in args.train_workers_decode] + [("features", args.train_workers_features)]
        for key, workers in plan:
            source = sources["decode video" if key == "decode" else "features cache"]
            model = build_model(tokenizer, args.seed, args.model)  # the same init for every run
            loader = make_loader(manifest, model, tokenizer, source, args.batch_size, workers, args.seed)
            row = {"input": key, "num_workers": workers, **train_epoch(model, loader)}
            print(f"train epoch {key} workers={workers}: {row['seconds']:.1f} s", file=sys.stderr)
            runs.append(row)
        decode_best = min(r["seconds"] for r in runs if r["input"] == "decode")
        features = next(r["seconds"] for r in runs if r["input"] == "features")
        results["train"] = {"runs": runs, "speedup": round(decode_best / features, 2),
                            "tower_seconds_per_batch": round(tower_seconds(model, args.batch_size), 3)}

    results["total_seconds"] = round(time.perf_counter() - total_start, 1)
    import shutil

    shutil.rmtree(cache_dir, ignore_errors=True)
    print(markdown(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
