"""What the user names, as files: video arguments (files, directories, globs) and manifests."""

from __future__ import annotations

import os
from collections.abc import Iterable
from glob import glob, has_magic
from pathlib import Path
from typing import Union

from calmcap.constants import MANIFEST_FILE
from calmcap.errors import CalmcapError

PathLike = Union[str, "os.PathLike[str]"]

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".mts", ".3gp", ".ogv"}
)


def expand_video_inputs(inputs: Iterable[PathLike]) -> tuple[list[str], list[tuple[str, str]]]:
    """Files, directories (recursive, video extensions) and glob patterns -> video paths.

    Returns ``(videos, problems)``: the paths in argument order (directories and globs sorted,
    duplicates dropped) and ``(input, reason)`` for inputs that name nothing. A file named
    explicitly is kept whatever its extension (decoding will say if it is not a video).
    """
    videos: list[str] = []
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(path: str) -> None:
        key = os.path.normpath(os.path.abspath(path))
        if key not in seen:
            seen.add(key)
            videos.append(path)

    def is_video(path: Path) -> bool:
        return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS

    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if is_video(p))
            if not found:
                examples = ", ".join(sorted(VIDEO_EXTENSIONS)[:6])
                problems.append((text, f"directory holds no video files ({examples}, ...)"))
            for f in found:
                add(f)
        elif path.exists() or os.path.lexists(text):
            add(text)
        elif has_magic(text):
            matches = sorted(glob(text, recursive=True))
            found = []
            for match in matches:
                p = Path(match)
                if p.is_dir():
                    found.extend(sorted(str(q) for q in p.rglob("*") if is_video(q)))
                elif is_video(p):
                    found.append(match)
            if not found:
                if not matches:
                    problems.append((text, "pattern matches no video file"))
                else:
                    problems.append((text, f"pattern matches {len(matches)} path(s) but no video file"))
            for f in found:
                add(f)
        else:
            problems.append((text, "no such file or directory"))
    return videos, problems


def resolve_manifest(data: PathLike) -> Path:
    """A manifest file, or ``DIR/manifest.jsonl`` for a directory; one-line error when missing."""
    path = Path(data)
    if path.is_dir():
        path = path / MANIFEST_FILE
        if not path.is_file():
            raise CalmcapError(f"{data}: directory has no manifest.jsonl "
                               "(pass the manifest file, or make one with `calmcap prepare` / `calmcap synth`)")
    elif not path.is_file():
        raise CalmcapError(f"{data}: no such manifest file or directory")
    return path
