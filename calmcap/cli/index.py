"""``calmcap index VIDEO... --out INDEX``: embed videos into an on-disk search index (resumable)."""

from __future__ import annotations

import argparse
from typing import Any

from calmcap.cli.options import add_model_options, positive_int
from calmcap.cli.output import out, report_problems

EXIT_SOME_FAILED = 1


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "index", help="embed videos into an on-disk search index (resumable)", add_arguments=_arguments,
        description="Embed videos (normalised video vectors, float16) into an index folder. "
                    "Re-running adds only videos not yet indexed; bad videos are listed and skipped (exit status 1).",
        epilog="example:\n  calmcap index --model runs/synth_tiny/model data/synth/videos/test --out index/synth_test",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)
    return parser


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("videos", nargs="+", metavar="VIDEO", help="video files, directories or glob patterns")
    parser.add_argument("--out", required=True, metavar="INDEX", help="index folder")
    add_model_options(parser)
    parser.add_argument("--batch-size", type=positive_int, default=8, metavar="B",
                        help="videos per forward pass (default: %(default)s)")
    parser.add_argument("--num-frames", type=positive_int, default=None, metavar="T",
                        help="frames per video (default: the model's)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new index even if one exists (another model, frames)")
    parser.add_argument("--no-overlap", action="store_true", help="decode in the main thread")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from calmcap.pipeline import PipelineStats, build_index, expand_video_inputs, resolve_model_path

    model = resolve_model_path(args.model)
    videos, problems = expand_video_inputs(args.videos)
    report_problems(problems)
    if not videos:
        return EXIT_SOME_FAILED
    stats = PipelineStats()
    report = build_index(videos, args.out, model, batch_size=args.batch_size, num_frames=args.num_frames,
                         device=args.device, overlap=not args.no_overlap, overwrite=args.overwrite,
                         progress=not args.no_progress, stats=stats)
    report_problems(report.bad)
    rate = f", {stats.steady_videos_per_second:.2f} videos/s after loading the model" if report.added else ""
    failed = len(report.bad) + len(problems)
    out(f"indexed {report.added} new video(s) ({report.skipped} already indexed, {failed} failed) "
        f"in {report.seconds:.1f} s{rate}; {report.path} holds {report.total}")
    return EXIT_SOME_FAILED if report.bad or problems else 0
