"""Find each entry's video file under the user's videos directory.

Releases of the same benchmark store videos under different names and folders: MSVD's
``YouTubeClips/<clip>.avi``, LSMDC's ``<movie>/<clip>.avi``, DiDeMo's ``<name>.mov`` re-encoded as
``<name>.mp4`` or ``<name>.mov.mp4``, ActivityNet's ``v_<id>.mp4`` or ``<id>.mkv`` (CLIP4Clip drops
the prefix). Rather than guess one layout, the directory is walked once and each expected name is
looked up by relative path, then file name, then name without extension.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from calmcap.data.manifest import ManifestEntry

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (
    ".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".3gp", ".ogv", ".wmv",
)


def _strip_video_extension(name: str) -> str:
    root, ext = os.path.splitext(name)
    return root if ext.lower() in VIDEO_EXTENSIONS else name


@dataclass
class VideoIndex:
    """Every file under a directory, keyed by relative path, file name and extension-less name."""

    root: Path
    by_path: dict[str, str] = field(default_factory=dict)
    by_name: dict[str, str] = field(default_factory=dict)
    by_stem: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, root: str | Path) -> VideoIndex:
        index = cls(Path(root))
        for directory, subdirs, files in os.walk(index.root):
            subdirs.sort()  # deterministic: the first file of a name in sorted walk order wins
            for name in sorted(files):
                relative = PurePosixPath(Path(directory).relative_to(index.root).as_posix()) / name
                rel = str(relative).removeprefix("./")
                index.by_path[rel] = rel
                index.by_name.setdefault(name, rel)
                stem = _strip_video_extension(name)
                if stem != name:
                    index.by_stem.setdefault(stem, rel)
        return index

    def find(self, expected: str) -> str | None:
        """The relative path of the file for ``expected`` (a release file name), or None."""
        if expected in self.by_path:
            return expected
        name = PurePosixPath(expected).name
        for key, table in ((name, self.by_name), (name, self.by_stem), (_strip_video_extension(name), self.by_stem)):
            if key in table:
                return table[key]
        return None


@dataclass
class VideoLocation:
    """Where the videos of a list of entries were found."""

    found: dict[str, Path]  # expected name -> absolute path
    missing: list[str]  # expected names with no file, in first-seen order


def locate_videos(
    entries: list[ManifestEntry],
    videos_dir: str | Path,
    aliases: Callable[[str], list[str]] | None = None,
) -> VideoLocation:
    """Look up each distinct ``entry.video`` (and its aliases) in ``videos_dir``."""
    root = Path(videos_dir).resolve()
    index = VideoIndex.build(root)
    logger.info("indexed %d files under %s", len(index.by_path), root)
    found: dict[str, Path] = {}
    missing: list[str] = []
    for expected in dict.fromkeys(entry.video for entry in entries):
        for candidate in [expected, *(aliases(expected) if aliases else [])]:
            relative = index.find(candidate)
            if relative is not None:
                found[expected] = root / relative
                break
        else:
            missing.append(expected)
    return VideoLocation(found=found, missing=missing)


def relative_to_manifest(video: Path, manifest_path: str | Path) -> str:
    """``video`` relative to the manifest's directory (absolute if no relative path exists)."""
    manifest_dir = Path(manifest_path).resolve().parent
    try:
        return Path(os.path.relpath(video, manifest_dir)).as_posix()
    except ValueError:  # different drives on Windows
        return video.as_posix()
