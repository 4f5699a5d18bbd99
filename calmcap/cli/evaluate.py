"""``calmcap evaluate``: caption + retrieval metrics of a checkpoint on manifests/splits, written as reports."""

from __future__ import annotations

import argparse
from typing import Any

from calmcap.cli.options import add_decoding_options, add_model_options, caption_options, positive_int
from calmcap.cli.output import err, out
from calmcap.errors import CalmcapError


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate", help="caption + retrieval metrics of a checkpoint on manifests/splits; writes reports",
        add_arguments=_arguments,
        description="Evaluate a checkpoint on one or several manifest splits and write report.json, report.md, "
                    "predictions and plots to --out. Several --data/--split pairs give one cross-domain table.",
        epilog="examples:\n"
               "  calmcap evaluate --model runs/synth_tiny/model --data data/synth --split test --split test_ood "
               "--out reports/synth\n"
               "  calmcap evaluate --model M --data data/msrvtt --split test "
               "--data data/msvd/manifest.jsonl --split test --out reports/xd",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run, data_groups=None)
    return parser


class _DataAction(argparse.Action):
    """``--data M``: start a new (manifest, splits) group."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[override]
        groups = list(getattr(namespace, "data_groups", None) or [])
        groups.append((values, []))
        namespace.data_groups = groups


class _SplitAction(argparse.Action):
    """``--split S`` (or ``S1,S2``): add splits to the most recent ``--data``."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[override]
        groups = getattr(namespace, "data_groups", None)
        if not groups:
            parser.error("--split must follow the --data it belongs to")
        groups[-1][1].extend(s for s in values.split(",") if s)


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("--data", action=_DataAction, required=True, metavar="MANIFEST_OR_DIR",
                        help="manifest (DIR means DIR/manifest.jsonl); repeatable, each followed by its --split(s)")
    parser.add_argument("--split", action=_SplitAction, required=True, metavar="NAME",
                        help="split of the preceding --data (repeatable; 'a,b' for several)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the reports")
    parser.add_argument("--task", choices=("all", "caption", "retrieval"), default="all",
                        help="what to evaluate (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=16, metavar="B",
                        help="videos per batch (default: %(default)s)")
    parser.add_argument("--num-workers", type=int, default=1, metavar="N",
                        help="decoder processes (overlap with the model; 0: decode in this process; "
                             "default: %(default)s)")
    parser.add_argument("--num-frames", type=positive_int, default=None, metavar="T",
                        help="frames per video (default: the model's)")
    parser.add_argument("--max-videos", type=positive_int, default=None, metavar="N",
                        help="only the first N videos of each split (quick checks)")
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (saves a Java start-up)")
    parser.add_argument("--no-java", action="store_true", help="Python tokenizer, no METEOR (not paper-comparable)")
    parser.add_argument("--no-plots", action="store_true", help="no PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_decoding_options(parser, sampling=False)


def run(args: argparse.Namespace) -> int:
    from calmcap.pipeline import evaluate_checkpoint

    groups = args.data_groups or []
    if not groups:
        raise CalmcapError("evaluate needs --data MANIFEST_OR_DIR --split NAME")
    for data, splits in groups:
        if not splits:
            raise CalmcapError(f"--data {data} has no --split (e.g. --data {data} --split test)")
    options = caption_options(args)
    report = evaluate_checkpoint(
        args.model, groups, out=args.out, batch_size=args.batch_size, num_workers=args.num_workers,
        num_frames=args.num_frames, decode=options, captioning=args.task in ("all", "caption"),
        retrieval=args.task in ("all", "retrieval"), use_java=False if args.no_java else None,
        meteor=not args.no_meteor, max_videos=args.max_videos, device=args.device,
        progress=not args.no_progress, plots=not args.no_plots,
    )
    out(report.summary_table())
    bad = sum(len(r.bad_videos) for r in report.rows)
    if bad:
        err(f"{bad} video(s) could not be decoded: not captioned, and ranked last in retrieval (misses); "
             "report.md lists them")
    names = sorted({p.name for p in report.files.values()}, key=lambda n: (not n.startswith("report"), n))
    out(f"wrote {', '.join(names)} to {args.out}")
    return 0
