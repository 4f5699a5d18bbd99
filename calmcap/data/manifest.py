"""The one internal dataset format: a JSON-lines manifest, one video per line.

Each line is an object with the required fields

    {"video_id": str, "video": str, "captions": [str, ...], "split": str}

where ``video`` is a path relative to the manifest's directory (absolute paths are kept as
they are). Optional fields: ``start_seconds`` / ``end_seconds`` (a clip inside the file) and
any extra keys a converter wants to keep (``extra``: a dict of JSON values). Every dataset
reader and converter produces this format (docs/DESIGN.md section 4, "Manifests and converters").
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calmcap.atomic import atomic_path
from calmcap.constants import MANIFEST_FILE
from calmcap.errors import ManifestError

REQUIRED_FIELDS = ("video_id", "video", "captions", "split")
OPTIONAL_FIELDS = ("start_seconds", "end_seconds", "extra")


@dataclass
class ManifestEntry:
    """One video of a manifest. ``video`` is relative to the manifest's directory."""

    video_id: str
    video: str
    captions: list[str]
    split: str
    start_seconds: float | None = None
    end_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "video_id": self.video_id,
            "video": self.video,
            "captions": list(self.captions),
            "split": self.split,
        }
        if self.start_seconds is not None:
            out["start_seconds"] = self.start_seconds
        if self.end_seconds is not None:
            out["end_seconds"] = self.end_seconds
        if self.extra:
            out["extra"] = self.extra
        return out


def _fail(path: str | os.PathLike, line: int, message: str) -> ManifestError:
    return ManifestError(f"{path}:{line}: {message}")


def parse_entry(obj: Any, path: str | os.PathLike = "<manifest>", line: int = 0) -> ManifestEntry:
    """Validate one decoded JSON object and build an entry; errors name file, line and field."""
    if not isinstance(obj, dict):
        raise _fail(path, line, f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise _fail(path, line, f"unknown field {unknown[0]!r} (known: {', '.join(REQUIRED_FIELDS + OPTIONAL_FIELDS)})")
    for name in REQUIRED_FIELDS:
        if name not in obj:
            raise _fail(path, line, f"missing field {name!r}")
    for name in ("video_id", "video", "split"):
        if not isinstance(obj[name], str) or not obj[name].strip():
            raise _fail(path, line, f"field {name!r} must be a non-empty string, got {obj[name]!r}")
    captions = obj["captions"]
    if not isinstance(captions, list) or not captions:
        raise _fail(path, line, f"field 'captions' must be a non-empty list of strings, got {captions!r}")
    for i, caption in enumerate(captions):
        if not isinstance(caption, str) or not caption.strip():
            raise _fail(path, line, f"field 'captions[{i}]' must be a non-empty string, got {caption!r}")
    bounds = {}
    for name in ("start_seconds", "end_seconds"):
        value = obj.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise _fail(path, line, f"field {name!r} must be a non-negative number, got {value!r}")
            value = float(value)
        bounds[name] = value
    if (
        bounds["start_seconds"] is not None
        and bounds["end_seconds"] is not None
        and bounds["end_seconds"] <= bounds["start_seconds"]
    ):
        raise _fail(path, line, f"'end_seconds' ({bounds['end_seconds']}) must be after "
                                f"'start_seconds' ({bounds['start_seconds']})")
    extra = obj.get("extra", {})
    if not isinstance(extra, dict):
        raise _fail(path, line, f"field 'extra' must be an object, got {type(extra).__name__}")
    return ManifestEntry(
        video_id=obj["video_id"],
        video=obj["video"],
        captions=[c.strip() for c in captions],
        split=obj["split"],
        start_seconds=bounds["start_seconds"],
        end_seconds=bounds["end_seconds"],
        extra=extra,
    )


def manifest_file(path: str | os.PathLike) -> Path:
    """A manifest path; a directory stands for its ``manifest.jsonl``."""
    path = Path(path)
    return path / MANIFEST_FILE if path.is_dir() else path


def iter_manifest(path: str | os.PathLike) -> Iterator[ManifestEntry]:
    """Yield the entries of a manifest file (or a directory's ``manifest.jsonl``), validating each line."""
    path = manifest_file(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found" if not path.exists() else f"{path}: not a file")
    seen: dict[str, int] = {}
    with path.open("r", encoding="utf-8") as handle:
        for line_number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as error:
                raise _fail(path, line_number, f"malformed JSON ({error.msg} at column {error.colno})") from None
            entry = parse_entry(obj, path, line_number)
            if entry.video_id in seen:
                raise _fail(path, line_number,
                            f"duplicate video_id {entry.video_id!r} (first on line {seen[entry.video_id]})")
            seen[entry.video_id] = line_number
            yield entry


def split_names(splits: Iterable[str] | str | None) -> list[str] | None:
    """A ``splits`` argument (one name, several, or None for all) as a list, or None."""
    if splits is None:
        return None
    return [splits] if isinstance(splits, str) else list(splits)


def read_manifest(path: str | os.PathLike, splits: Iterable[str] | str | None = None) -> list[ManifestEntry]:
    """Read a manifest, optionally keeping only the given split(s)."""
    names = split_names(splits)
    wanted = None if names is None else set(names)
    entries = [e for e in iter_manifest(path) if wanted is None or e.split in wanted]
    if wanted is not None and not entries:
        raise ManifestError(f"{path}: no videos in split(s) {sorted(wanted)}")
    return entries


def write_manifest(path: str | os.PathLike, entries: Iterable[ManifestEntry]) -> Path:
    """Write entries as JSON lines, atomically (a temporary file renamed into place)."""
    path = Path(path)
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as handle:
        for entry in entries:
            handle.write(json.dumps(entry.to_json(), ensure_ascii=False, sort_keys=True) + "\n")
    return path


def resolve_video_path(manifest_path: str | os.PathLike, entry: ManifestEntry) -> Path:
    """The absolute path of an entry's video (relative paths are relative to the manifest)."""
    video = Path(entry.video)
    return video if video.is_absolute() else manifest_file(manifest_path).resolve().parent / video
