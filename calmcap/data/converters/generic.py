"""Any caption table: CSV / TSV (with a header), JSON (a list of objects) or JSON lines.

Each row (record) names a video and one caption, or a JSON list of captions; rows of the same
video are grouped into one entry, captions in row order. Column (key) names are options:
``video_column`` (default ``video``, a path relative to the videos directory), ``caption_column``
(default ``caption``), and optionally ``video_id_column`` (default: the video path without its
extension), ``split_column`` (default: every video in ``default_split``), ``start_column`` /
``end_column`` (a clip inside the file, in seconds; the default id then includes the times).
A JSON file may hold its list under ``records_key``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from calmcap.data.converters.base import (
    ConversionResult,
    annotation_file,
    clean_captions,
    load_json,
    read_csv_rows,
    read_lines,
)
from calmcap.data.manifest import ManifestEntry
from calmcap.errors import ManifestError


def _records(path: Path, records_key: str | None, columns: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(place, record)``, where place reads ``line N`` or ``record N`` for error messages."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".txt"):
        delimiter = "\t" if suffix == ".tsv" else ","
        for line, row in read_csv_rows(path, columns, delimiter=delimiter):
            yield f"line {line}", row
        return
    if suffix == ".jsonl":
        for line, text in read_lines(path):
            if not text.strip():
                continue
            try:
                yield f"line {line}", json.loads(text)
            except json.JSONDecodeError as error:
                raise ManifestError(f"{path}:{line}: malformed JSON ({error.msg} at column {error.colno})") from None
        return
    if suffix == ".json":
        data = load_json(path)
        if records_key is not None:
            if not isinstance(data, dict) or records_key not in data:
                raise ManifestError(f"{path}: missing top-level key {records_key!r} (records_key)")
            data = data[records_key]
        if not isinstance(data, list):
            raise ManifestError(
                f"{path}: expected a JSON list of records"
                + ("" if records_key else " (set records_key if the list is under a top-level key)")
            )
        for i, record in enumerate(data):
            yield f"record {i}", record
        return
    raise ManifestError(f"{path}: unsupported file type {suffix or '(none)'!r} (use .csv, .tsv, .json or .jsonl)")


def _field(record: Any, column: str, path: Path, place: str) -> Any:
    if not isinstance(record, dict):
        raise ManifestError(f"{path}: {place}: expected an object, got {type(record).__name__}")
    if column not in record:
        raise ManifestError(f"{path}: {place}: missing column {column!r}")
    return record[column]


def _seconds(value: Any, column: str, path: Path, place: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not math.isfinite(seconds) or seconds < 0:
        raise ManifestError(f"{path}: {place}: column {column!r} must be non-negative seconds, got {value!r}")
    return seconds


def convert_generic(
    annotations: Sequence[str | Path],
    *,
    video_column: str = "video",
    caption_column: str = "caption",
    video_id_column: str | None = None,
    split_column: str | None = None,
    default_split: str = "train",
    start_column: str | None = None,
    end_column: str | None = None,
    records_key: str | None = None,
) -> ConversionResult:
    """Group caption rows into manifest entries (see the module docstring for the columns)."""
    if not annotations:
        raise ManifestError("generic: no annotation file given")
    columns = [c for c in (video_column, caption_column, video_id_column, split_column, start_column, end_column) if c]
    entries: dict[str, ManifestEntry] = {}
    first_seen: dict[str, str] = {}
    sources: list[str] = []
    for arg in annotations:
        path = annotation_file(arg)
        sources.append(str(path))
        for place, record in _records(path, records_key, columns):
            video = _field(record, video_column, path, place)
            if not isinstance(video, str) or not video.strip():
                raise ManifestError(f"{path}: {place}: column {video_column!r} must be a non-empty path")
            video = video.strip()
            raw = _field(record, caption_column, path, place)
            texts = raw if isinstance(raw, list) else [raw]
            if not all(isinstance(t, str) for t in texts):
                raise ManifestError(f"{path}: {place}: column {caption_column!r} must be text or a list of texts")
            split = str(_field(record, split_column, path, place)).strip() if split_column else default_split
            if not split:
                raise ManifestError(f"{path}: {place}: empty split in column {split_column!r}")
            start = end = None
            if start_column:
                start = _seconds(_field(record, start_column, path, place), start_column, path, place)
            if end_column:
                end = _seconds(_field(record, end_column, path, place), end_column, path, place)
            if start is not None and end is not None and end <= start:
                raise ManifestError(f"{path}: {place}: end ({end}) must be after start ({start})")
            if video_id_column:
                video_id = str(_field(record, video_id_column, path, place)).strip()
                if not video_id:
                    raise ManifestError(f"{path}: {place}: empty video id in column {video_id_column!r}")
            else:
                video_id = os.path.splitext(video)[0]
                if start is not None or end is not None:
                    video_id += f"@{start if start is not None else ''}-{end if end is not None else ''}"
            entry = entries.get(video_id)
            if entry is None:
                entries[video_id] = ManifestEntry(video_id, video, [], split, start, end)
                first_seen[video_id] = f"{path}: {place}"
                entry = entries[video_id]
            elif (entry.video, entry.split, entry.start_seconds, entry.end_seconds) != (video, split, start, end):
                raise ManifestError(
                    f"{path}: {place}: video id {video_id!r} was first seen at {first_seen[video_id]} "
                    "with a different video, split or start/end"
                )
            entry.captions.extend(clean_captions(texts))
    empty = [video_id for video_id, entry in entries.items() if not entry.captions]
    if empty:
        raise ManifestError(f"{first_seen[empty[0]]}: video {empty[0]!r} has no non-empty caption")
    options = {
        "video_column": video_column, "caption_column": caption_column, "video_id_column": video_id_column,
        "split_column": split_column, "default_split": None if split_column else default_split,
        "start_column": start_column, "end_column": end_column, "records_key": records_key,
    }
    conventions = ["rows grouped by video id, captions in row order (calmcap generic importer)"]
    return ConversionResult("generic", "custom", list(entries.values()), options, conventions, sources)
