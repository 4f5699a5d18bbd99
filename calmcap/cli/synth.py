"""``calmcap synth OUT_DIR``: render the embedded benchmark (or its pretraining corpus) and print a summary."""

from __future__ import annotations

import argparse
from typing import Any

from calmcap.cli.output import out


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    help_text = "generate the embedded benchmark (rendered H.264 videos + manifest)"
    parser = subparsers.add_parser(
        "synth", help=help_text, add_arguments=_arguments,
        description="Render the embedded shapes-and-actions video-caption benchmark (no download needed).",
    )
    parser.set_defaults(run=run)
    return parser


def _arguments(parser: argparse.ArgumentParser) -> None:
    from calmcap.data import pretrain_corpus, synth

    parser.add_argument("out_dir", help="output folder (manifest.jsonl, videos/, concepts.txt, benchmark.json)")
    parser.add_argument("--corpus", choices=("benchmark", "pretrain"), default="benchmark",
                        help="benchmark: the train/val/test/test_ood/test_ood_visual/test_ood_text splits (default); "
                             "pretrain: the pretraining corpus of the same world "
                             "(splits pretrain, pretrain_val; docs/BENCHMARK_SYNTH.md)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--num-train", type=int, default=synth.DEFAULT_NUM_TRAIN,
                        help="train videos (default: %(default)s)")
    parser.add_argument("--num-videos", type=int, default=pretrain_corpus.DEFAULT_NUM_VIDEOS,
                        help="--corpus pretrain: pretraining videos (default: %(default)s)")
    parser.add_argument("--num-val", type=int, default=None,
                        help=f"val videos (default: {synth.DEFAULT_NUM_VAL}; "
                             f"{pretrain_corpus.DEFAULT_NUM_VAL} for --corpus pretrain)")
    parser.add_argument("--num-test", type=int, default=synth.DEFAULT_NUM_TEST,
                        help="in-domain test videos (default: %(default)s)")
    parser.add_argument("--num-test-ood", type=int, default=synth.DEFAULT_NUM_TEST_OOD,
                        help="out-of-domain test videos (default: %(default)s)")
    parser.add_argument("--num-test-ood-visual", type=int, default=synth.DEFAULT_NUM_TEST_OOD_VISUAL,
                        help="test videos with domain B rendering and domain A wording (default: %(default)s)")
    parser.add_argument("--num-test-ood-text", type=int, default=synth.DEFAULT_NUM_TEST_OOD_TEXT,
                        help="test videos with domain A rendering and domain B wording (default: %(default)s)")
    parser.add_argument("--num-frames", type=int, default=synth.DEFAULT_NUM_FRAMES,
                        help="frames per video (default: %(default)s)")
    parser.add_argument("--fps", type=float, default=synth.DEFAULT_FPS, help="frame rate (default: %(default)s)")
    parser.add_argument("--size", type=int, default=synth.DEFAULT_SIZE,
                        help="frame side in pixels (default: %(default)s)")
    parser.add_argument("--captions-per-video", type=int, default=synth.CAPTIONS_PER_VIDEO,
                        help="paraphrases per video (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes; 0 renders in this process (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace a benchmark already in OUT_DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.corpus == "pretrain":
        return _run_pretrain_corpus(args)
    from calmcap.data.synth import DEFAULT_NUM_VAL, SPLIT_DOMAINS, SPLITS, generate_benchmark

    summary = generate_benchmark(
        args.out_dir, seed=args.seed, num_train=args.num_train,
        num_val=DEFAULT_NUM_VAL if args.num_val is None else args.num_val, num_test=args.num_test,
        num_test_ood=args.num_test_ood, num_test_ood_visual=args.num_test_ood_visual,
        num_test_ood_text=args.num_test_ood_text, num_frames_per_video=args.num_frames, fps=args.fps, size=args.size,
        captions_per_video=args.captions_per_video, workers=args.workers, progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    total = sum(summary["num_videos"].values())
    out(f"wrote {total} videos to {summary['out_dir']} in {summary['seconds']:.1f} s")
    out(f"{'split':<15} {'pixels':<6} {'words':<5} {'videos':>6} {'chance t2v R@1':>15} {'ceiling t2v R@1':>16} "
        f"{'ceiling v2t R@1':>16}")
    for split in SPLITS:
        n = summary["num_videos"][split]
        if n == 0:
            continue
        rendering, wording = SPLIT_DOMAINS[split]
        out(f"{split:<15} {rendering:<6} {wording:<5} {n:>6} {summary['chance'][split]['t2v/R@1']:>15.4f} "
            f"{summary['ceiling'][split]['t2v/R@1']:>16.4f} {summary['ceiling'][split]['v2t/R@1']:>16.4f}")
    out(f"manifest: {summary['manifest']}")
    return 0


def _run_pretrain_corpus(args: argparse.Namespace) -> int:
    from calmcap.data.pretrain_corpus import DEFAULT_NUM_VAL, generate_pretrain_corpus

    summary = generate_pretrain_corpus(
        args.out_dir, seed=args.seed, num_videos=args.num_videos,
        num_val=DEFAULT_NUM_VAL if args.num_val is None else args.num_val, num_frames_per_video=args.num_frames,
        fps=args.fps, size=args.size, captions_per_video=args.captions_per_video, workers=args.workers,
        progress=not args.no_progress, overwrite=args.overwrite,
    )
    total = sum(summary["num_videos"].values())
    out(f"wrote a pretraining corpus of {total} videos to {summary['out_dir']} in {summary['seconds']:.1f} s")
    for split, n in summary["num_videos"].items():
        out(f"  {split:<13} {n:>7} videos {summary['num_captions'][split]:>8} captions")
    out("  caption kinds: " + ", ".join(f"{k} {v}" for k, v in summary["caption_kinds"].items()))
    out(f"manifest: {summary['manifest']}")
    return 0
