"""``calmcap score``: caption metrics of any system's predictions against references
(:func:`calmcap.pipeline.score_captions`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from calmcap.cli.output import out


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "score", help="caption metrics of any system's predictions against references", add_arguments=_arguments,
        description="BLEU-1..4, METEOR, ROUGE-L and CIDEr (x100, pycocoevalcap) of predictions against references.",
        epilog="examples:\n"
               "  calmcap score --predictions reports/synth/predictions.json --references data/synth --split test\n"
               "  calmcap score --predictions preds.json --references captions_val2014.json --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)
    return parser


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--predictions", required=True, metavar="JSON",
                        help='COCO-style [{"image_id", "caption"}] or {"id": "caption"}')
    parser.add_argument("--references", required=True, metavar="PATH",
                        help='COCO-style annotations {"annotations": [{"image_id", "caption"}]}, {"id": [captions]}, '
                             "or a calmcap manifest (.jsonl or its folder) with --split")
    parser.add_argument("--split", action="append", metavar="NAME", help="manifest split(s) to take references from")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR")
    parser.add_argument("--no-java", action="store_true", help="Python tokenizer, no METEOR (not paper-comparable)")


def run(args: argparse.Namespace) -> int:
    from calmcap.pipeline import score_captions
    from calmcap.reports import caption_metrics_table

    result = score_captions(args.predictions, args.references, split=args.split or None,
                            use_java=False if args.no_java else None, meteor=not args.no_meteor)
    if args.json:
        out(json.dumps(result.to_json(), indent=2))
        return 0
    out(caption_metrics_table(result.metrics))
    out(f"{result.num_videos} videos, {result.num_references} reference captions; "
         f"x100; tokenizer: {result.protocol['tokenizer']}")
    return 0
