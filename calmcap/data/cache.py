"""On-disk caches that let training skip video decoding.

Two kinds, one file per video, both keyed by ``video_id`` (a hash names the file, so any id
is a safe file name):

* **frames**: uint8 ``[F, S, S, 3]``: the clip's frames, decoded once, resized (shorter side
  to S, bicubic, antialiased) and centre-cropped to the tower's input size S. F is every frame
  of the clip, or ``max_frames`` sampled uniformly from it when the clip is longer.
* **features**: float16 ``[F, D]``: a frozen image tower's features of those frames, so
  training with a frozen tower never runs the tower (nor decodes) again.

Sampling ``num_frames`` out of the F cached frames uses the same segment rule as decoding
(:func:`calmcap.data.video.sample_indices`). Writes are atomic (:mod:`calmcap.atomic`), so an
interrupted caching pass can be resumed: a file that exists is complete. The passes that fill
the caches are :mod:`calmcap.data.frame_cache` and :mod:`calmcap.data.feature_cache`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calmcap.atomic import atomic_path, atomic_write_text
from calmcap.constants import (
    BAD_VIDEOS_FILE,
    CACHE_META_FILE as META_FILE,
    FEATURES,  # noqa: F401  (the two kinds, named here with the format)
    FRAMES,  # noqa: F401
)
from calmcap.errors import CalmcapError

# Bumped when the meaning of a cached file changes; every cache's metadata records it.
CACHE_FORMAT_VERSION = 1


@dataclass
class CacheReport:
    """Outcome of a caching pass (:func:`calmcap.data.frame_cache.cache_frames`,
    :func:`calmcap.data.feature_cache.cache_features`).

    ``num_written`` files were written by this run, ``num_skipped`` existed already; ``bad``
    lists ``{"video_id", "video", "reason"}`` for the videos that could not be cached.
    """

    kind: str
    cache_dir: Path
    num_videos: int
    num_written: int
    num_skipped: int
    bad: list[dict[str, str]]
    seconds: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_cached(self) -> int:
        return self.num_written + self.num_skipped

    @property
    def bad_videos_path(self) -> Path:
        return Path(self.cache_dir) / self.kind / BAD_VIDEOS_FILE


def cache_key(video_id: str) -> str:
    """A file-name-safe key for a video id (sha1 hex, first 20 characters)."""
    return hashlib.sha1(video_id.encode("utf-8")).hexdigest()[:20]


def cache_file(cache_dir: str | os.PathLike, kind: str, video_id: str) -> Path:
    """Where a video's array lives in a cache: ``<cache_dir>/<kind>/<key[:2]>/<key>.npy``."""
    key = cache_key(video_id)
    return Path(cache_dir) / kind / key[:2] / f"{key}.npy"


def save_array(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def load_array(path: Path, mmap: bool = False) -> np.ndarray:
    """Read a cached array (never unpickles)."""
    return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)


def write_cache_meta(cache_dir: str | os.PathLike, kind: str, meta: dict) -> None:
    """Record how a cache was made (image size, tower, ...), checked by :func:`read_cache_meta`."""
    atomic_write_text(Path(cache_dir) / kind / META_FILE, json.dumps(meta, indent=2, sort_keys=True) + "\n")


def read_cache_meta(cache_dir: str | os.PathLike, kind: str) -> dict | None:
    """A cache's metadata, None when there is no such cache."""
    path = Path(cache_dir) / kind / META_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def check_cache_meta(existing: dict[str, Any] | None, wanted: dict[str, Any], cache_dir: Path, kind: str) -> None:
    """Refuse to add to a cache made with other settings (each of ``wanted`` that ``existing`` records)."""
    if existing is None:
        return
    for key, value in wanted.items():
        if key in existing and existing[key] != value:
            raise CalmcapError(
                f"{cache_dir / kind}: the cache was made with {key}={existing[key]!r}, not {value!r}; "
                f"use another cache directory or pass overwrite=True (--overwrite) to rebuild it"
            )
