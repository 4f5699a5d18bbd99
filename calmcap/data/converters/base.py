"""What every converter returns, and the careful readers they share.

A converter turns a benchmark's official annotation files into manifest entries
(:mod:`calmcap.data.manifest`). Each entry's ``video`` is, at this stage, the file name the
dataset's release uses (relative to the user's videos directory); :mod:`.prepare` later finds
the real file and rewrites the path relative to the manifest.

The readers here turn every way an annotation file can be wrong (missing, not UTF-8, bad JSON,
a CSV row with the wrong number of fields, a missing column or key) into a
:class:`~calmcap.errors.ManifestError` whose message starts with the file (and line or key).
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calmcap.data.manifest import ManifestEntry
from calmcap.errors import ManifestError

logger = logging.getLogger(__name__)

# `SPLIT=PATH` on the command line names a file's split explicitly.
_SPLIT_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*)=(.+)$")


@dataclass
class ConversionResult:
    """The entries a converter produced and every protocol choice that shaped them.

    ``options`` and ``conventions`` are written to the ``<manifest>.protocol.json`` sidecar, so
    every report can state which protocol its numbers follow (docs/DESIGN.md section 4).
    ``video_aliases`` maps a release file name to other names the same video is often stored
    under (e.g. ActivityNet's ``v_`` prefix, which CLIP4Clip's copies drop).
    """

    dataset: str
    protocol: str
    entries: list[ManifestEntry]
    options: dict[str, Any] = field(default_factory=dict)
    conventions: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    video_aliases: Callable[[str], list[str]] | None = None


def annotation_file(path: str | Path) -> Path:
    """Check that an annotation file exists and is a file; return it as a Path."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: annotation file not found")
    if not path.is_file():
        raise ManifestError(f"{path}: not a file")
    return path


def load_json(path: str | Path) -> Any:
    """Parse a JSON annotation file; a syntax error names the line and column."""
    path = annotation_file(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ManifestError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ManifestError(f"{path}:{error.lineno}: malformed JSON ({error.msg} at column {error.colno})") from None


def read_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` of a UTF-8 text file, without the line break."""
    path = annotation_file(path)
    with path.open("r", encoding="utf-8-sig", newline="") as handle:
        line_number = 0
        try:
            for line_number, raw in enumerate(handle, start=1):
                yield line_number, raw.rstrip("\r\n")
        except UnicodeDecodeError as error:
            raise ManifestError(f"{path}:{line_number + 1}: not UTF-8 text ({error.reason})") from None


def read_csv_rows(
    path: str | Path, required: Sequence[str], delimiter: str = ","
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line_number, row)`` of a CSV file with a header that has the ``required`` columns."""
    path = annotation_file(path)
    with path.open("r", encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        try:
            header = reader.fieldnames
            if header is None:
                raise ManifestError(f"{path}: empty file (expected a header with columns {', '.join(required)})")
            missing = [name for name in required if name not in header]
            if missing:
                raise ManifestError(
                    f"{path}:1: missing column {missing[0]!r} (header has: {', '.join(map(repr, header))})"
                )
            for row in reader:
                # DictReader files surplus fields under None and fills absent ones with None.
                if None in row or any(value is None for value in row.values()):
                    raise ManifestError(
                        f"{path}:{reader.line_num}: expected {len(header)} fields, got a row of a different length"
                    )
                yield reader.line_num, row
        except csv.Error as error:
            raise ManifestError(f"{path}:{reader.line_num}: malformed CSV ({error})") from None
        except UnicodeDecodeError as error:
            raise ManifestError(f"{path}:{reader.line_num + 1}: not UTF-8 text ({error.reason})") from None


def require(obj: Any, key: str, kind: type | tuple[type, ...], path: Path, where: str) -> Any:
    """``obj[key]``, checked to exist and be of ``kind``; errors name the file and the place."""
    if not isinstance(obj, dict):
        raise ManifestError(f"{path}: {where}: expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise ManifestError(f"{path}: {where}: missing key {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and bool not in _as_tuple(kind):
        expected = " or ".join(k.__name__ for k in _as_tuple(kind))
        raise ManifestError(f"{path}: {where}: key {key!r} must be {expected}, got {type(value).__name__}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def clean_caption(text: str) -> str:
    """Strip a caption and collapse runs of whitespace (annotations often carry stray spaces)."""
    return " ".join(text.split())


def clean_captions(texts: Iterable[str]) -> list[str]:
    """The non-empty cleaned captions, in order."""
    return [c for c in (clean_caption(t) for t in texts) if c]


def split_annotation_arg(arg: str | Path) -> tuple[str | None, Path]:
    """Parse ``SPLIT=PATH`` (explicit split) or ``PATH``; a real file named ``a=b`` wins."""
    text = str(arg)
    match = _SPLIT_PREFIX.match(text)
    if match and not Path(text).exists():
        return match.group(1), Path(match.group(2))
    return None, Path(text)


def assign_splits(
    annotations: Sequence[str | Path], infer: Callable[[str], str | None], dataset: str
) -> list[tuple[str, Path]]:
    """Pair each annotation file with its split: explicit ``SPLIT=PATH`` or inferred from the name.

    Two files may not land in the same split (that would silently merge, e.g., a 1k test list
    with a full test set); the user names splits explicitly to resolve it.
    """
    pairs: list[tuple[str, Path]] = []
    for arg in annotations:
        split, path = split_annotation_arg(arg)
        if split is None:
            split = infer(path.name)
            if split is None:
                raise ManifestError(
                    f"{path}: cannot tell which {dataset} split this file holds from its name; "
                    f"pass it as SPLIT={path} (e.g. test={path})"
                )
        pairs.append((split, annotation_file(path)))
    seen: dict[str, Path] = {}
    for split, path in pairs:
        if split in seen:
            raise ManifestError(
                f"{path}: both {seen[split]} and {path} map to split {split!r}; "
                "name the splits explicitly with SPLIT=PATH"
            )
        seen[split] = path
    return pairs


def warn_skipped(what: str, examples: list[str], path: Path | str) -> None:
    """Log one warning for a batch of skipped records (not one per record)."""
    if examples:
        shown = ", ".join(examples[:5]) + (", ..." if len(examples) > 5 else "")
        logger.warning("%s: skipped %d %s (%s)", path, len(examples), what, shown)
