"""On-disk caches that let training skip video decoding.

Two kinds, one file per video, both keyed by ``video_id`` (a hash names the file, so any id
is a safe file name):

* **frames**: uint8 ``[F, S, S, 3]``: the clip's frames, decoded once, resized (shorter side
  to S, bicubic, antialiased) and centre-cropped to the tower's input size S. F is every frame
  of the clip, or ``max_frames`` sampled uniformly from it when the clip is longer.
* **features**: float16 ``[F, D]``: a frozen image tower's features of those frames, so
  training with a frozen tower never runs the tower (nor decodes) again.

Sampling ``num_frames`` out of the F cached frames uses the same segment rule as decoding
(:func:`calmcap.data.video.sample_indices`). Writes are atomic (temp file + rename), so an
interrupted caching pass can be resumed: a file that exists is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

FRAMES = "frames"
FEATURES = "features"
META_FILE = "cache.json"


def cache_key(video_id: str) -> str:
    """A file-name-safe key for a video id (sha1 hex, first 20 characters)."""
    return hashlib.sha1(video_id.encode("utf-8")).hexdigest()[:20]


def cache_file(cache_dir: str | os.PathLike, kind: str, video_id: str) -> Path:
    key = cache_key(video_id)
    return Path(cache_dir) / kind / key[:2] / f"{key}.npy"


def save_array(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
    os.replace(tmp, path)


def load_array(path: Path, mmap: bool = False) -> np.ndarray:
    """Read a cached array (never unpickles)."""
    return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)


def write_cache_meta(cache_dir: str | os.PathLike, kind: str, meta: dict) -> None:
    """Record how a cache was made (image size, tower, ...), checked by :func:`read_cache_meta`."""
    path = Path(cache_dir) / kind / META_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_cache_meta(cache_dir: str | os.PathLike, kind: str) -> dict | None:
    path = Path(cache_dir) / kind / META_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
