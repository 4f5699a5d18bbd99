"""``calmcap prepare <dataset>``: annotation files + a videos directory -> manifest + protocol sidecar.

Writes ``MANIFEST`` (JSON lines, :mod:`calmcap.data.manifest`) and ``MANIFEST.protocol.json``:
the dataset, protocol, every option, the conventions followed with their sources, the input
files, per-split counts and the videos that were not found. Evaluation reports read the sidecar
(:func:`read_protocol`) so each number states its protocol (docs/DESIGN.md section 4).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calmcap.atomic import atomic_write_text
from calmcap.data.converters.activitynet import convert_activitynet
from calmcap.data.converters.base import ConversionResult
from calmcap.data.converters.didemo import convert_didemo
from calmcap.data.converters.generic import convert_generic
from calmcap.data.converters.lsmdc import convert_lsmdc
from calmcap.data.converters.msrvtt import convert_msrvtt
from calmcap.data.converters.msvd import convert_msvd
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
    atomic_write_text(protocol_path, json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n")
    logger.info("wrote %s (%d entries) and %s", out, len(result.entries), protocol_path)
    return PrepareReport(out, protocol_path, result.dataset, result.protocol, splits, missing)
