"""``calmcap caption VIDEO...``: caption videos (files, directories, globs) with
:func:`calmcap.pipeline.iter_captions`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from calmcap.cli.options import add_decoding_options, add_model_options, caption_options, positive_int
from calmcap.cli.output import err, out, report_problems

EXIT_SOME_FAILED = 1


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "caption", help="caption videos (files, directories, globs)", add_arguments=_arguments,
        description="Caption videos. Prints 'path<TAB>caption' per video (only the caption for a single file). "
                    "Bad videos are listed on stderr as 'path: reason'; "
                    "the others are still captioned (exit status 1).",
        epilog="examples:\n  calmcap caption clip.mp4 --model runs/synth_tiny/model\n"
               "  calmcap caption videos/ 'more/*.mp4' --json --num-return-sequences 3 > captions.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)
    return parser


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("videos", nargs="+", metavar="VIDEO",
                        help="video files, directories (searched recursively) or glob patterns")
    add_model_options(parser)
    parser.add_argument("--json", action="store_true",
                        help='print a JSON array of {"video", "caption", "score"} (+ "beams")')
    parser.add_argument("--num-frames", type=positive_int, default=None, metavar="T",
                        help="frames per video (default: the model's)")
    parser.add_argument("--batch-size", type=positive_int, default=4, metavar="B",
                        help="videos per forward pass; decoding of the next batch overlaps this one "
                             "(default: %(default)s)")
    parser.add_argument("--no-overlap", action="store_true",
                        help="decode in the main thread (no overlap with the model)")
    parser.add_argument("--timings", action="store_true", help="print where the time went on stderr")
    add_decoding_options(parser)


def run(args: argparse.Namespace) -> int:
    from calmcap.pipeline import PipelineStats, expand_video_inputs, iter_captions, resolve_model_path

    options = caption_options(args)
    model = resolve_model_path(args.model)  # the "no model" error before any work
    videos, problems = expand_video_inputs(args.videos)
    report_problems(problems)
    if not videos:
        return EXIT_SOME_FAILED
    single = len(args.videos) == 1 and len(videos) == 1 and Path(args.videos[0]).is_file()
    stats = PipelineStats()
    collected: list[dict[str, Any]] = []
    failed = len(problems)
    for result in iter_captions(videos, model, options=options, num_frames=args.num_frames, batch_size=args.batch_size,
                                device=args.device, overlap=not args.no_overlap, stats=stats,
                                seed=args.seed if options.do_sample else None):
        if not result.ok:
            failed += 1
            err(f"{result.video}: {result.error}")
            continue
        if args.json:
            collected.append(result.to_json(beams=options.num_return_sequences > 1))
            continue
        for caption, _ in result.beams:
            out(caption if single else f"{result.video}\t{caption}")
    if args.json:
        out(json.dumps(collected, indent=2, ensure_ascii=False))
    if stats.videos + failed > 1:
        err(f"captioned {stats.videos} of {stats.videos + failed} videos in {stats.wall_seconds:.1f} s: "
            f"{stats.steady_videos_per_second:.2f} videos/s after the model loaded "
            f"({stats.import_seconds + stats.load_seconds:.1f} s)" + (f"; {failed} failed" if failed else ""))
    if args.timings:
        err("timings: " + stats.summary())
    return EXIT_SOME_FAILED if failed else 0
