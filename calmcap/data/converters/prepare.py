"""``calmcap prepare <dataset>``: annotation files + a videos directory -> manifest + protocol sidecar.

Writes ``MANIFEST`` (JSON lines, :mod:`calmcap.data.manifest`) and ``MANIFEST.protocol.json``:
the dataset, protocol, every option, the conventions followed with their sources, the input
files, per-split counts and the videos that were not found. Evaluation reports read the sidecar
(:func:`read_protocol`) so each number states its protocol (DESIGN.md section 4).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from calmcap.data.converters.activitynet import PROTOCOLS as ANET_PROTOCOLS, TEST_FILES, convert_activitynet
from calmcap.data.converters.base import ConversionResult
from calmcap.data.converters.didemo import PROTOCOLS as DIDEMO_PROTOCOLS, convert_didemo
from calmcap.data.converters.generic import convert_generic
from calmcap.data.converters.lsmdc import convert_lsmdc
from calmcap.data.converters.msrvtt import PROTOCOLS as MSRVTT_PROTOCOLS, TEST_CAPTIONS, convert_msrvtt
from calmcap.data.converters.msvd import DEFAULT_SPLIT_SIZES, convert_msvd
from calmcap.data.converters.videos import locate_videos, relative_to_manifest
from calmcap.data.manifest import write_manifest
from calmcap.errors import ManifestError

logger = logging.getLogger(__name__)

CONVERTERS: dict[str, Callable[..., ConversionResult]] = {
    "msrvtt": convert_msrvtt,
    "msvd": convert_msvd,
    "didemo": convert_didemo,
    "lsmdc": convert_lsmdc,
    "activitynet": convert_activitynet,
    "generic": convert_generic,
}

PROTOCOL_SUFFIX = ".protocol.json"
_MISSING_SHOWN = 5


@dataclass
class PrepareReport:
    """What :func:`prepare` wrote. ``splits`` maps split -> {"videos": n, "captions": m}."""

    manifest_path: Path
    protocol_path: Path
    dataset: str
    protocol: str
    splits: dict[str, dict[str, int]]
    missing_videos: list[str]


def protocol_path_for(manifest_path: str | Path) -> Path:
    """The sidecar of a manifest: ``<manifest>.protocol.json``."""
    return Path(str(manifest_path) + PROTOCOL_SUFFIX)


def read_protocol(manifest_path: str | Path) -> dict[str, Any] | None:
    """The protocol sidecar of a manifest, or None if it has none (hand-written manifests)."""
    path = protocol_path_for(manifest_path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ManifestError(f"{path}:{error.lineno}: malformed JSON ({error.msg} at column {error.colno})") from None


def prepare(
    dataset: str,
    annotations: Sequence[str | Path],
    videos_dir: str | Path,
    out: str | Path,
    *,
    strict: bool = False,
    **options: Any,
) -> PrepareReport:
    """Convert ``dataset``'s annotation files into the manifest ``out`` and its protocol sidecar.

    ``options`` go to the dataset's converter (``CONVERTERS[dataset]``). Videos not found under
    ``videos_dir`` are logged and listed in the sidecar; with ``strict`` they are an error and
    nothing is written.
    """
    if dataset not in CONVERTERS:
        raise ManifestError(f"unknown dataset {dataset!r} (choose from {', '.join(CONVERTERS)})")
    videos_dir = Path(videos_dir)
    if not videos_dir.is_dir():
        raise ManifestError(f"{videos_dir}: videos directory not found")
    result = CONVERTERS[dataset](list(annotations), **options)
    if not result.entries:
        raise ManifestError(f"{', '.join(result.sources)}: no videos with captions found for {dataset}")
    seen: set[str] = set()
    for entry in result.entries:
        if entry.video_id in seen:
            raise ManifestError(
                f"{', '.join(result.sources)}: video id {entry.video_id!r} occurs in two splits or files"
            )
        seen.add(entry.video_id)

    located = locate_videos(result.entries, videos_dir, result.video_aliases)
    missing = located.missing
    if missing:
        shown = ", ".join(missing[:_MISSING_SHOWN]) + (", ..." if len(missing) > _MISSING_SHOWN else "")
        message = f"{len(missing)} of {len(located.found) + len(missing)} videos not found under {videos_dir} ({shown})"
        if strict:
            raise ManifestError(f"{videos_dir}: {message}")
        logger.warning("%s; they stay in the manifest at their expected path", message)

    out = Path(out)
    for entry in result.entries:
        path = located.found.get(entry.video, videos_dir.resolve() / entry.video)
        entry.video = relative_to_manifest(path, out)
    write_manifest(out, result.entries)

    splits: dict[str, dict[str, int]] = {}
    for entry in result.entries:
        counts = splits.setdefault(entry.split, {"videos": 0, "captions": 0})
        counts["videos"] += 1
        counts["captions"] += len(entry.captions)
    sidecar = {
        "dataset": result.dataset,
        "protocol": result.protocol,
        "options": result.options,
        "conventions": result.conventions,
        "annotations": [os.path.abspath(s) for s in result.sources],
        "videos_dir": str(videos_dir.resolve()),
        "splits": splits,
        "missing_videos": {"count": len(missing), "videos": missing},
    }
    protocol_path = protocol_path_for(out)
    tmp = protocol_path.with_name(protocol_path.name + ".tmp")
    tmp.write_text(json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, protocol_path)
    logger.info("wrote %s (%d entries) and %s", out, len(result.entries), protocol_path)
    return PrepareReport(out, protocol_path, result.dataset, result.protocol, splits, missing)


# --- command line ---------------------------------------------------------------------------

def _add_dataset_arguments(name: str, parser: argparse.ArgumentParser) -> list[str]:
    """Add ``name``'s converter options; return their dests (= the converter's keyword names)."""
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


_DESCRIPTIONS = {
    "msrvtt": "MSR-VTT: MSRVTT_data.json (or *_videodatainfo.json); videos videoNNNN.mp4",
    "msvd": "MSVD: AllVideoDescriptions.txt and youtube_mapping.txt; videos <clip>.avi",
    "didemo": "DiDeMo: train_data.json val_data.json test_data.json",
    "lsmdc": "LSMDC 2016: LSMDC16_annos_training.csv LSMDC16_annos_val.csv LSMDC16_challenge_1000_publictect.csv",
    "activitynet": "ActivityNet Captions: train.json val_1.json val_2.json",
    "generic": "any CSV/TSV/JSON/JSONL caption table",
}


def add_prepare_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``prepare`` on a CLI's subparsers; the parsed namespace's ``func(args)`` runs it."""
    parser = subparsers.add_parser(
        "prepare", help="convert a benchmark's annotation files into a manifest",
        description="Convert a benchmark's official annotation files into a calmcap manifest "
                    "(plus MANIFEST.protocol.json recording the protocol).",
    )
    datasets = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for name in CONVERTERS:
        sub = datasets.add_parser(name, help=_DESCRIPTIONS[name], description=_DESCRIPTIONS[name])
        sub.add_argument("--annotations", nargs="+", required=True, metavar="PATH",
                         help="annotation files; SPLIT=PATH names a file's split explicitly")
        sub.add_argument("--videos", required=True, metavar="DIR", help="directory holding the video files")
        sub.add_argument("--out", required=True, metavar="MANIFEST", help="manifest to write (JSON lines)")
        sub.add_argument("--strict", action="store_true", help="fail if any video file is missing")
        option_names = _add_dataset_arguments(name, sub)
        sub.set_defaults(func=run_prepare, prepare_options=tuple(option_names))
    return parser


def run_prepare(args: argparse.Namespace) -> int:
    """Run a parsed ``prepare`` command and print its summary; CalmcapError propagates to the CLI."""
    options = {name: getattr(args, name) for name in args.prepare_options if getattr(args, name) is not None}
    report = prepare(args.dataset, args.annotations, args.videos, args.out, strict=args.strict, **options)
    print(f"{report.dataset} ({report.protocol}) -> {report.manifest_path}")
    for split, counts in report.splits.items():
        print(f"  {split}: {counts['videos']} videos, {counts['captions']} captions")
    if report.missing_videos:
        print(f"  missing videos: {len(report.missing_videos)} (listed in {report.protocol_path})", file=sys.stderr)
    print(f"protocol: {report.protocol_path}")
    return 0


def prepare_main(argv: list[str] | None = None) -> int:
    """Entry point for ``prepare <dataset> --annotations PATH... --videos DIR --out MANIFEST ...``.

    ``argv`` is what follows ``prepare`` (a leading ``prepare`` is accepted too); errors in the
    input raise :class:`~calmcap.errors.CalmcapError` for the top-level CLI to report.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["prepare"]:
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="calmcap")
    add_prepare_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["prepare", *argv])
    return args.func(args)
