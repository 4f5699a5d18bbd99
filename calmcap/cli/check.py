"""``calmcap check MANIFEST``: open every video of a manifest and list the bad ones
(:mod:`calmcap.data.video_check`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from calmcap.cli.output import out, print_bad_videos


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "check", help="open every video of a manifest and list the bad ones", add_arguments=_arguments,
        description="Open every video of a manifest (probe + decode a few frames) and list the bad ones. "
                    "Resumable: a re-run skips the videos already checked.",
    )
    parser.set_defaults(run=run)
    return parser


def _arguments(parser: argparse.ArgumentParser) -> None:
    from calmcap.data.video import BACKENDS
    from calmcap.data.video_check import DEFAULT_CHECK_FRAMES

    parser.add_argument("manifest", help="manifest (JSON lines)")
    parser.add_argument("--split", action="append", dest="splits", metavar="SPLIT",
                        help="only this split (repeatable; default: every split)")
    parser.add_argument("--workers", type=int, default=2,
                        help="decoder processes; 0 runs in this process (default: %(default)s)")
    parser.add_argument("--out", default=None, help="output folder (default: <manifest dir>/check-<manifest stem>)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="decoder (default: %(default)s)")
    parser.add_argument("--num-frames", type=int, default=DEFAULT_CHECK_FRAMES,
                        help="frames decoded per video (default: %(default)s)")
    parser.add_argument("--restart", action="store_true", help="forget earlier progress and check every video again")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Exit status 0 when every video is good, 1 when some are bad."""
    from calmcap.constants import CHECK_PROGRESS_FILE
    from calmcap.data.video_check import check_videos, default_check_dir

    out_dir = Path(args.out) if args.out else default_check_dir(args.manifest)
    if args.restart:
        (out_dir / CHECK_PROGRESS_FILE).unlink(missing_ok=True)
    report = check_videos(args.manifest, splits=args.splits, workers=args.workers, out=out_dir,
                          progress=not args.no_progress, backend=args.backend, num_frames=args.num_frames)
    rate = report.summary.get("videos_per_second")
    out(f"checked {report.num_videos} videos ({report.num_checked} now, {report.num_resumed} from earlier runs) "
        f"in {report.seconds:.1f} s" + (f" ({rate:.1f} videos/s)" if rate else ""))
    out(f"good: {report.num_ok}  bad: {report.num_bad}  clip hours: {report.summary['total_clip_hours']:.2f}")
    for reason, count in report.summary["bad_reasons"].items():
        out(f"  {count:>6}  {reason}")
    print_bad_videos(report.bad, report.bad_videos_path)
    if report.summary.get("num_warnings"):
        out(f"{report.summary['num_warnings']} warning(s) (clips starting after the video ends) "
            f"in {report.summary_path}")
    out(f"summary: {report.summary_path}")
    return 1 if report.bad else 0
