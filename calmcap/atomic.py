"""Atomic writes: a file or directory appears complete under its name, or not at all.

Everything calmcap writes that a later run reads (checkpoints, manifests, caches, reports,
indexes, encoded videos) is first written under a temporary name in the same folder and then
renamed into place; a rename within one file system is atomic, so an interrupted run leaves the
old version or the new one, never half of one. Resumable passes rely on this: a cache file that
exists is complete.

Temporary names are hidden and unique per process and call,
``.<stem>.tmp-<pid>-<random><suffix>``: concurrent writers never collide, and the suffix is kept
for tools that pick a format from it (FFmpeg).

* :func:`atomic_write_bytes`, :func:`atomic_write_text`: the whole content at once.
* :func:`atomic_path`: a context manager yielding the temporary path, for content written by
  someone else (``np.save``, FFmpeg, ``save_file``) or for a whole directory.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "temporary_name"]


def temporary_name(path: str | os.PathLike) -> Path:
    """A fresh hidden name next to ``path``: ``.<stem>.tmp-<pid>-<random><suffix>``."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; it takes ``path``'s place on success.

    The caller creates the file or directory at the yielded path. When the block ends without
    an exception it replaces ``path`` (a directory that exists is moved aside first and removed
    after, as a directory cannot be renamed onto a non-empty one); when the block raises, the
    temporary is removed and ``path`` is left as it was. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if path.is_dir() and not path.is_symlink():
        old = temporary_name(path)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
