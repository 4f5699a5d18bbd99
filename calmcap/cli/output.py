"""What the CLI prints: results on stdout, problems and progress on stderr (the library only logs)."""

from __future__ import annotations

import sys
from pathlib import Path


def out(message: str = "") -> None:
    """A line of the command's result, on stdout."""
    print(message, flush=True)


def err(message: str) -> None:
    """A line for the user that is not the result (bad videos, throughput), on stderr."""
    print(message, file=sys.stderr, flush=True)


def report_problems(problems: list[tuple[str, str]]) -> None:
    """``path: reason`` per input that could not be used, on stderr."""
    for path, reason in problems:
        err(f"{path}: {reason}")


def print_bad_videos(bad: list[dict[str, str]], path: Path, limit: int = 10) -> None:
    """The first ``limit`` bad videos of a pass over a manifest, and where all of them are listed."""
    if not bad:
        return
    out(f"{len(bad)} bad video(s), listed in {path}:")
    for record in bad[:limit]:
        out(f"  {record['video_id']}  {record['video']}: {record['reason']}")
    if len(bad) > limit:
        out(f"  ... and {len(bad) - limit} more")
