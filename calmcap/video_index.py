"""An on-disk index of normalised video embeddings for text-to-video search.

Layout of an index folder::

    index.json        {"format": "calmcap-video-index", "format_version": 1, "embed_dim", "dtype": "float16",
                       "count", "num_frames", "model": {path, name, sha256, config_sha256, ...}, "created", "updated"}
    embeddings.npy    float16 [N, D], L2-normalised video vectors V (row i belongs to ids[i])
    ids.json          [N] video paths (absolute)
    pending/          part-XXXXXX.npy + part-XXXXXX.json: batches written during a build, merged
                      into embeddings.npy / ids.json when the build finishes
    bad_videos.json   [{"video", "reason"}] of the last build (they are tried again next time)

Building is resumable: every ``flush`` writes a part (the ``.npy`` first, then the ``.json``
that makes it count), so an interrupted build keeps what it finished and a re-run skips every
video already in the index. An index is always searchable, pending parts included. Ids are
unique: a part repeating an id already merged (a crash between merging and removing the
parts) is ignored.

float16 halves the disk and memory of float32; cosine scores of unit vectors keep about three
decimal digits, well below the gaps that decide a ranking in practice. Search streams the
matrix in chunks converted to float32 (numpy has no fast float16 matmul), so memory stays
bounded for any index size; 100,000 x 512 takes about 0.2 s on 2 cores (eval/bench_search.py).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calmcap.atomic import atomic_path, atomic_write_text
from calmcap.errors import CalmcapError

logger = logging.getLogger(__name__)

INDEX_FORMAT = "calmcap-video-index"
INDEX_VERSION = 1
META_FILE = "index.json"
EMBEDDINGS_FILE = "embeddings.npy"
IDS_FILE = "ids.json"
PENDING_DIR = "pending"
BAD_FILE = "bad_videos.json"
SEARCH_CHUNK_ROWS = 32768


@dataclass
class SearchHit:
    """One search result: ``rank`` (1 = best), the indexed ``video`` and its cosine ``score``."""

    rank: int
    video: str
    score: float

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "video": self.video, "score": self.score}


@dataclass
class IndexBuildReport:
    """What a build did: ``added`` now, ``skipped`` (already indexed), ``total`` in the index, ``bad`` videos."""

    path: Path
    added: int = 0
    skipped: int = 0
    total: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        np.save(handle, array)


def read_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """The index.json of an index folder, None when there is none; errors for a foreign file."""
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CalmcapError(f"{meta_path}: unreadable ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
        raise CalmcapError(f"{meta_path}: not a calmcap video index")
    if meta.get("format_version") != INDEX_VERSION:
        raise CalmcapError(f"{meta_path}: index format version {meta.get('format_version')} is not supported "
                           f"(expects {INDEX_VERSION})")
    return meta


def _pending_parts(path: Path) -> list[tuple[Path, Path]]:
    """Complete pending parts (their .json exists), in order."""
    folder = path / PENDING_DIR
    if not folder.is_dir():
        return []
    parts = []
    for ids_path in sorted(folder.glob("part-*.json")):
        npy = ids_path.with_suffix(".npy")
        if npy.is_file():
            parts.append((npy, ids_path))
    return parts


def _load_main(path: Path, embed_dim: int) -> tuple[np.ndarray, list[str]]:
    emb_path, ids_path = path / EMBEDDINGS_FILE, path / IDS_FILE
    if not emb_path.is_file():
        return np.zeros((0, embed_dim), dtype=np.float16), []
    embeddings = np.load(emb_path, mmap_mode="r")
    ids = json.loads(ids_path.read_text(encoding="utf-8")) if ids_path.is_file() else []
    if len(ids) != embeddings.shape[0]:
        # A merge stopped between replacing embeddings.npy and ids.json: finish it.
        staged = ids_path.with_name(f".{ids_path.name}.tmp")
        if staged.is_file():
            staged_ids = json.loads(staged.read_text(encoding="utf-8"))
            if len(staged_ids) == embeddings.shape[0]:
                os.replace(staged, ids_path)
                return embeddings, staged_ids
        raise CalmcapError(f"{path}: {EMBEDDINGS_FILE} has {embeddings.shape[0]} rows but {IDS_FILE} {len(ids)} ids; "
                           "rebuild the index with `calmcap index --overwrite`")
    if embeddings.ndim != 2 or embeddings.shape[1] != embed_dim:
        raise CalmcapError(f"{emb_path}: shape {embeddings.shape} does not match embed_dim {embed_dim} in {META_FILE}")
    return embeddings, ids


def _load_all(path: Path, embed_dim: int) -> tuple[list[np.ndarray], list[str], list[tuple[Path, Path]]]:
    """Main matrix plus pending parts (ids deduplicated, first occurrence wins)."""
    main, ids = _load_main(path, embed_dim)
    blocks: list[np.ndarray] = [main] if len(ids) else []
    seen = set(ids)
    all_ids = list(ids)
    parts = _pending_parts(path)
    for npy, ids_path in parts:
        part = np.load(npy)
        part_ids = json.loads(ids_path.read_text(encoding="utf-8"))
        if part.shape[0] != len(part_ids):
            logger.warning("ignoring damaged index part %s (%d rows, %d ids)", npy, part.shape[0], len(part_ids))
            continue
        keep = [i for i, key in enumerate(part_ids) if key not in seen]
        if keep:
            blocks.append(part[keep])
            for i in keep:
                seen.add(part_ids[i])
                all_ids.append(part_ids[i])
    return blocks, all_ids, parts


class VideoIndex:
    """A searchable index: float16 ``embeddings`` [N, D] (memory-mapped when merged) and ``ids`` [N]."""

    def __init__(self, path: Path, blocks: list[np.ndarray], ids: list[str], meta: dict[str, Any]) -> None:
        self.path = path
        self.blocks = blocks
        self.ids = ids
        self.meta = meta
        self.embed_dim = int(meta["embed_dim"])

    @classmethod
    def open(cls, path: str | os.PathLike) -> VideoIndex:
        """Open an index folder (merged rows and pending parts)."""
        path = Path(path)
        if not path.exists():
            raise CalmcapError(f"{path}: no such index (build one with `calmcap index`)")
        meta = read_meta(path)
        if meta is None:
            raise CalmcapError(f"{path}: not a calmcap video index (no {META_FILE}); build one with `calmcap index`")
        blocks, ids, _ = _load_all(path, int(meta["embed_dim"]))
        return cls(path, blocks, ids, meta)

    @property
    def model(self) -> dict[str, Any]:
        return dict(self.meta.get("model") or {})

    def __len__(self) -> int:
        return len(self.ids)

    def embeddings(self) -> np.ndarray:
        """All rows as one float16 array [N, D] (a copy when there are pending parts)."""
        if not self.blocks:
            return np.zeros((0, self.embed_dim), dtype=np.float16)
        return self.blocks[0] if len(self.blocks) == 1 else np.concatenate(self.blocks)

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """Cosine scores [Q, N] of normalised queries [Q, D] (or [D]) against every row."""
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.shape[-1] != self.embed_dim:
            raise CalmcapError(f"query has dimension {q.shape[-1]} but the index holds {self.embed_dim}-d embeddings")
        out = np.empty((q.shape[0], len(self)), dtype=np.float32)
        offset = 0
        for block in self.blocks:
            for start in range(0, block.shape[0], SEARCH_CHUNK_ROWS):
                chunk = np.asarray(block[start : start + SEARCH_CHUNK_ROWS], dtype=np.float32)
                np.matmul(q, chunk.T, out=out[:, offset : offset + chunk.shape[0]])
                offset += chunk.shape[0]
        return out

    def search(self, queries: np.ndarray, top_k: int = 10) -> list[list[SearchHit]]:
        """The ``top_k`` rows per query, best first (ties: earlier row first)."""
        if top_k < 1:
            raise CalmcapError(f"top_k must be at least 1, got {top_k}")
        if len(self) == 0:
            raise CalmcapError(f"{self.path}: the index is empty")
        scores = self.scores(queries)
        k = min(top_k, scores.shape[1])
        results = []
        for row in scores:
            # Take a few more than k so that ties at the boundary are resolved by row order.
            cut = min(len(row), k + 16)
            candidates = np.argpartition(-row, cut - 1)[:cut] if cut < len(row) else np.arange(len(row))
            order = candidates[np.lexsort((candidates, -row[candidates]))][:k]
            results.append([SearchHit(rank=r + 1, video=self.ids[i], score=float(row[i])) for r, i in enumerate(order)])
        return results


class IndexWriter:
    """Add embeddings to an index folder in parts; :meth:`finalize` merges them.

    An existing index is extended when it was built by the same model (checkpoint sha256) with
    the same number of frames; otherwise a one-line error, unless ``overwrite`` starts afresh.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        model: dict[str, Any],
        embed_dim: int,
        num_frames: int,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise CalmcapError(f"{self.path}: exists and is not a folder")
        meta = read_meta(self.path) if self.path.is_dir() else None
        if meta is None and self.path.is_dir() and any(self.path.iterdir()) and not overwrite:
            raise CalmcapError(f"{self.path}: folder is not empty and holds no index; pick another --out")
        if meta is not None and not overwrite:
            problem = self._mismatch(meta, model, embed_dim, num_frames)
            if problem:
                raise CalmcapError(f"{self.path}: {problem}; pass --overwrite to rebuild the index")
        if overwrite and meta is not None:
            for name in (EMBEDDINGS_FILE, IDS_FILE, META_FILE, BAD_FILE):
                (self.path / name).unlink(missing_ok=True)
            shutil.rmtree(self.path / PENDING_DIR, ignore_errors=True)
            meta = None
        self.path.mkdir(parents=True, exist_ok=True)
        now = _now()
        self.meta = meta or {
            "format": INDEX_FORMAT, "format_version": INDEX_VERSION, "embed_dim": int(embed_dim), "dtype": "float16",
            "count": 0, "num_frames": int(num_frames), "model": model, "created": now, "updated": now,
        }
        if meta is None:
            _write_json(self.path / META_FILE, self.meta)
        _, ids, parts = _load_all(self.path, int(embed_dim))
        self.done: set[str] = set(ids)
        self.count = len(ids)
        self._next_part = 1 + max((int(p[0].stem.split("-")[1]) for p in parts), default=0)
        self._ids: list[str] = []
        self._rows: list[np.ndarray] = []

    @staticmethod
    def _mismatch(meta: dict[str, Any], model: dict[str, Any], embed_dim: int, num_frames: int) -> str | None:
        stored = meta.get("model") or {}
        if int(meta.get("embed_dim", -1)) != int(embed_dim):
            return f"index holds {meta.get('embed_dim')}-d embeddings, this model makes {embed_dim}-d ones"
        if stored.get("sha256") and model.get("sha256") and stored["sha256"] != model["sha256"]:
            return f"index was built with another model ({stored.get('path')}, sha256 {stored['sha256'][:12]})"
        if stored.get("config_sha256") != model.get("config_sha256"):
            return "index was built with a model of another architecture"
        if int(meta.get("num_frames", num_frames)) != int(num_frames):
            return f"index was built with {meta.get('num_frames')} frames per video, not {num_frames}"
        return None

    @property
    def pending(self) -> int:
        """Rows added but not yet written."""
        return len(self._ids)

    def add(self, ids: Sequence[str], embeddings: np.ndarray) -> None:
        """Buffer rows: ``ids`` [n] and normalised ``embeddings`` [n, D] (stored as float16)."""
        embeddings = np.asarray(embeddings)
        expected = (len(ids), int(self.meta["embed_dim"]))
        if embeddings.ndim != 2 or embeddings.shape != expected:
            raise ValueError(f"expected [{len(ids)}, {self.meta['embed_dim']}] embeddings, got {embeddings.shape}")
        for key, row in zip(ids, embeddings.astype(np.float16), strict=True):
            if key in self.done:
                continue
            self.done.add(key)
            self._ids.append(key)
            self._rows.append(row)

    def flush(self) -> None:
        """Write buffered rows as a pending part (npy first, then the ids that make it count)."""
        if not self._ids:
            return
        folder = self.path / PENDING_DIR
        folder.mkdir(exist_ok=True)
        name = f"part-{self._next_part:06d}"
        _save_npy(folder / f"{name}.npy", np.stack(self._rows))
        _write_json(folder / f"{name}.json", self._ids)
        self._next_part += 1
        self.count += len(self._ids)
        self._ids, self._rows = [], []

    def finalize(self, bad: Sequence[tuple[str, str]] = ()) -> None:
        """Flush, merge the pending parts into embeddings.npy / ids.json, and record bad videos."""
        self.flush()
        blocks, ids, parts = _load_all(self.path, int(self.meta["embed_dim"]))
        if parts:
            matrix = np.concatenate(blocks) if blocks else np.zeros((0, int(self.meta["embed_dim"])), dtype=np.float16)
            # Two files change together: the ids are staged under a fixed name first, so that a merge
            # stopped between the two renames is finished by the next open (_load_main).
            staged_ids = self.path / f".{IDS_FILE}.tmp"
            atomic_write_text(staged_ids, json.dumps(ids, ensure_ascii=False) + "\n")
            _save_npy(self.path / EMBEDDINGS_FILE, matrix.astype(np.float16, copy=False))
            os.replace(staged_ids, self.path / IDS_FILE)
            for npy, ids_path in parts:
                ids_path.unlink(missing_ok=True)
                npy.unlink(missing_ok=True)
            shutil.rmtree(self.path / PENDING_DIR, ignore_errors=True)
        self.count = len(ids)
        self.meta.update(count=self.count, updated=_now())
        _write_json(self.path / META_FILE, self.meta)
        _write_json(self.path / BAD_FILE, [{"video": v, "reason": r} for v, r in bad])


__all__ = ["IndexBuildReport", "IndexWriter", "SearchHit", "VideoIndex", "read_meta"]
