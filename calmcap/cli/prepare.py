"""``calmcap prepare DATASET``: convert a benchmark's annotation files into a manifest
(:mod:`calmcap.data.converters`)."""

from __future__ import annotations

import argparse
from typing import Any

from calmcap.cli.output import err, out

_DESCRIPTIONS = {
    "msrvtt": "MSR-VTT: MSRVTT_data.json (or *_videodatainfo.json); videos videoNNNN.mp4",
    "msvd": "MSVD: AllVideoDescriptions.txt and youtube_mapping.txt; videos <clip>.avi",
    "didemo": "DiDeMo: train_data.json val_data.json test_data.json",
    "lsmdc": "LSMDC 2016: LSMDC16_annos_training.csv LSMDC16_annos_val.csv LSMDC16_challenge_1000_publictect.csv",
    "activitynet": "ActivityNet Captions: train.json val_1.json val_2.json",
    "generic": "any CSV/TSV/JSON/JSONL caption table",
}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "prepare", help="convert a benchmark's annotation files into a manifest", add_arguments=_arguments,
        description="Convert a benchmark's official annotation files into a calmcap manifest "
                    "(plus MANIFEST.protocol.json recording the protocol).",
    )
    parser.set_defaults(run=run)
    return parser


def _arguments(parser: argparse.ArgumentParser) -> None:
    from calmcap.data.converters import CONVERTERS

    datasets = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for name in CONVERTERS:
        sub = datasets.add_parser(name, help=_DESCRIPTIONS[name], description=_DESCRIPTIONS[name])
        sub.add_argument("--annotations", nargs="+", required=True, metavar="PATH",
                         help="annotation files; SPLIT=PATH names a file's split explicitly")
        sub.add_argument("--videos", required=True, metavar="DIR", help="directory holding the video files")
        sub.add_argument("--out", required=True, metavar="MANIFEST", help="manifest to write (JSON lines)")
        sub.add_argument("--strict", action="store_true", help="fail if any video file is missing")
        sub.set_defaults(converter_options=tuple(_add_dataset_arguments(name, sub)))


def _add_dataset_arguments(name: str, parser: argparse.ArgumentParser) -> list[str]:
    """Add ``name``'s converter options; return their dests (= the converter's keyword names)."""
    from calmcap.data.converters.activitynet import PROTOCOLS as ANET_PROTOCOLS, TEST_FILES
    from calmcap.data.converters.didemo import PROTOCOLS as DIDEMO_PROTOCOLS
    from calmcap.data.converters.msrvtt import PROTOCOLS as MSRVTT_PROTOCOLS, TEST_CAPTIONS
    from calmcap.data.converters.msvd import DEFAULT_SPLIT_SIZES

    add = parser.add_argument
    if name == "msrvtt":
        actions = [
            add("--protocol", choices=MSRVTT_PROTOCOLS, default="retrieval-9k"),
            add("--train-csv", help="MSRVTT_train.9k.csv / MSRVTT_train.7k.csv (default: derived)"),
            add("--test-csv", help="MSRVTT_JSFUSION_test.csv (1k-A; needed for retrieval)"),
            add("--test-captions", choices=TEST_CAPTIONS, default="jsfusion",
                help="retrieval test: the one 1k-A sentence (default) or all references"),
        ]
    elif name == "msvd":
        actions = [add("--split-sizes", type=int, nargs=3, metavar=("TRAIN", "VAL", "TEST"),
                       default=list(DEFAULT_SPLIT_SIZES), help="consecutive vid-index counts (default 1200 100 670)")]
    elif name == "didemo":
        actions = [add("--protocol", choices=DIDEMO_PROTOCOLS, default="paragraph")]
    elif name == "activitynet":
        actions = [
            add("--protocol", choices=ANET_PROTOCOLS, default="paragraph"),
            add("--test-file", choices=TEST_FILES, default="val_1",
                help="validation file used as the test split (default val_1, as peers)"),
        ]
    elif name == "generic":
        actions = [
            add("--video-column", default="video"),
            add("--caption-column", default="caption"),
            add("--video-id-column"),
            add("--split-column"),
            add("--default-split", default="train"),
            add("--start-column"),
            add("--end-column"),
            add("--records-key", help="JSON: the top-level key that holds the list of records"),
        ]
    else:
        actions = []
    return [action.dest for action in actions]


def run(args: argparse.Namespace) -> int:
    """Convert, then print what was written; errors in the input are CalmcapErrors for the CLI to report."""
    from calmcap.data.converters import prepare

    options = {name: getattr(args, name) for name in args.converter_options if getattr(args, name) is not None}
    report = prepare(args.dataset, args.annotations, args.videos, args.out, strict=args.strict, **options)
    out(f"{report.dataset} ({report.protocol}) -> {report.manifest_path}")
    for split, counts in report.splits.items():
        out(f"  {split}: {counts['videos']} videos, {counts['captions']} captions")
    if report.missing_videos:
        err(f"  missing videos: {len(report.missing_videos)} (listed in {report.protocol_path})")
    out(f"protocol: {report.protocol_path}")
    return 0
