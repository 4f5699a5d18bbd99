"""JSON-lines record files: the bad-video lists and progress logs of passes over a manifest.

Records are written one sorted-key JSON object per line. A whole file is written atomically
(:func:`write_jsonl`); a log grows by appended, flushed lines (:func:`append_jsonl`), and
:func:`read_jsonl` skips a torn last line, so an interrupted pass loses at most one record.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from calmcap.atomic import atomic_write_text

logger = logging.getLogger(__name__)


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> Path:
    """Write ``records`` to ``path`` atomically, one per line."""
    return atomic_write_text(path, "".join(_line(record) for record in records))


def append_jsonl(handle: IO[str], record: dict[str, Any]) -> None:
    """Append one record to an open log and flush it (a crash loses at most the line being written)."""
    handle.write(_line(record))
    handle.flush()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a JSON-lines file (none when it does not exist); a torn or malformed line is skipped."""
    path = Path(path)
    records: list[dict[str, Any]] = []
    if not path.is_file():
        return records
    with path.open("r", encoding="utf-8") as handle:
        for raw in handle:
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError:
                logger.debug("%s: skipping a malformed line", path)
                continue
            if isinstance(obj, dict):
                records.append(obj)
    return records
