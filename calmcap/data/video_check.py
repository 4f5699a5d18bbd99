"""Checking a manifest's videos: open every one (probe + decode a few frames) and list the bad ones.

:func:`check_videos` runs over a manifest in crash-isolated worker processes
(:func:`calmcap.data.worker_pool.run_tasks`, one decoder thread each) and writes into an output
folder ``bad_videos.jsonl`` (``{"video_id", "video", "reason"}``) and ``summary.json``. A
``progress.jsonl`` there (one line per finished video) lets a re-run skip what is done; a video
whose file changed since (size or mtime) is checked again. Bad videos never stop the pass.
``calmcap check`` prints the summary.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calmcap.atomic import atomic_write_text
from calmcap.constants import BAD_VIDEOS_FILE, CHECK_PROGRESS_FILE, CHECK_SUMMARY_FILE, MAX_FRAME_SIDE
from calmcap.data.jsonl import append_jsonl, read_jsonl, write_jsonl
from calmcap.data.manifest import ManifestEntry, read_manifest, resolve_video_path, split_names
from calmcap.data.video import check_backend
from calmcap.data.worker_pool import progress_bar, run_tasks
from calmcap.errors import CalmcapError

logger = logging.getLogger(__name__)

# Frames decoded per video by `check_videos`: enough to reach into the file (segment middles
# spread over the clip), few enough to keep a pass over 100k videos short.
DEFAULT_CHECK_FRAMES = 4


@dataclass
class CheckReport:
    """Outcome of :func:`check_videos`.

    ``num_checked`` videos were opened by this run, ``num_resumed`` were taken from the
    progress file of an earlier run; ``bad`` lists ``{"video_id", "video", "reason"}`` for every
    bad video of the selection (earlier runs included).
    """

    out_dir: Path
    num_videos: int
    num_ok: int
    num_checked: int
    num_resumed: int
    bad: list[dict[str, str]]
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def num_bad(self) -> int:
        return len(self.bad)

    @property
    def bad_videos_path(self) -> Path:
        return self.out_dir / BAD_VIDEOS_FILE

    @property
    def summary_path(self) -> Path:
        return self.out_dir / CHECK_SUMMARY_FILE


def _fingerprint(path: Path) -> list[int] | None:
    """(size, mtime_ns) of a file, or None when it cannot be stat'ed: a changed file is re-checked."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


def reason_category(reason: str) -> str:
    """A short grouping key for a failure reason: its text before the first ``(``.

    ``"truncated or corrupt MP4/MOV file (ffmpeg: ...)"`` -> ``"truncated or corrupt MP4/MOV file"``.
    """
    head = reason.split("(", 1)[0].strip().rstrip(":").strip()
    return head or reason.strip()


@dataclass(frozen=True)
class _CheckTask:
    video_id: str
    video: str
    path: str
    start_seconds: float | None
    end_seconds: float | None
    num_frames: int
    backend: str


def _check_one(task: _CheckTask) -> dict[str, Any]:
    """Probe and decode a few frames of one video (runs in a worker). Never raises."""
    from calmcap.data.video import probe_video, read_frames, seconds_to_frame_window

    record: dict[str, Any] = {"video_id": task.video_id, "video": task.video,
                              "fingerprint": _fingerprint(Path(task.path))}
    try:
        info = probe_video(task.path, backend=task.backend)  # type: ignore[arg-type]
        start, end = seconds_to_frame_window(info.num_frames, info.fps, task.start_seconds, task.end_seconds)
        frames, mask = read_frames(
            task.path, task.num_frames, "uniform", task.start_seconds, task.end_seconds,
            backend=task.backend, max_side=MAX_FRAME_SIDE, num_threads=1,  # type: ignore[arg-type]
        )
        record.update(
            status="ok", width=info.width, height=info.height, fps=round(info.fps, 6),
            num_frames=info.num_frames, clip_frames=end - start, backend=info.backend,
            seconds=round((end - start) / info.fps, 4),
        )
        if task.start_seconds is not None and task.start_seconds >= info.duration_seconds:
            record["warning"] = (f"clip starts at {task.start_seconds:g}s, after the video ends "
                                 f"({info.duration_seconds:.2f}s); its last frame is used")
    except CalmcapError as error:  # VideoDecodeError: "<path>: <reason>"
        record.update(status="bad", reason=getattr(error, "reason", str(error)))
    except Exception as error:  # a decoder surprise is a bad video, not the end of the pass
        record.update(status="bad", reason=f"unexpected {type(error).__name__}: {' '.join(str(error).split())[:200]}")
    return record


def default_check_dir(manifest: str | os.PathLike) -> Path:
    """Where :func:`check_videos` writes when no ``out`` is given: ``<manifest dir>/check-<stem>``."""
    manifest = Path(manifest)
    return manifest.resolve().parent / f"check-{manifest.stem}"


def check_videos(
    manifest: str | os.PathLike,
    splits: str | Sequence[str] | None = None,
    workers: int = 2,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    backend: str = "auto",
    num_frames: int = DEFAULT_CHECK_FRAMES,
) -> CheckReport:
    """Open every video of a manifest and list the ones that cannot be decoded.

    Each video is probed and ``num_frames`` frames are decoded from its clip (uniform segment
    middles, as evaluation reads them), in ``workers`` spawned processes with one decoder thread
    each (0 or 1: in this process).

    Writes into ``out`` (default :func:`default_check_dir`):

    * ``progress.jsonl``: one line per finished video (``video_id``, ``video``, ``status`` "ok" or
      "bad", ``reason``, the file's size and mtime, and for good videos size / fps / frames),
      appended as results arrive. A re-run skips every video already there whose file did not
      change, so an interrupted pass resumes where it stopped. Delete it to check from scratch.
    * ``bad_videos.jsonl``: ``{"video_id", "video", "reason"}`` per bad video, manifest order.
    * ``summary.json``: counts, reasons grouped by kind, resolutions, frame rates, total hours,
      throughput.

    Returns:
        A :class:`CheckReport`.
    """
    check_backend(backend)
    if num_frames < 1:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    started = time.perf_counter()
    entries = read_manifest(manifest, splits)
    out_dir = Path(out) if out is not None else default_check_dir(manifest)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress_path = out_dir / CHECK_PROGRESS_FILE

    done: dict[str, dict[str, Any]] = {}
    for record in read_jsonl(progress_path):
        if "video_id" in record and record.get("status") in ("ok", "bad"):
            done[record["video_id"]] = record  # later lines win (a re-check after a change)
    tasks: list[_CheckTask] = []
    results: dict[str, dict[str, Any]] = {}
    for entry in entries:
        path = resolve_video_path(manifest, entry)
        previous = done.get(entry.video_id)
        if (previous is not None and previous.get("video") == entry.video
                and previous.get("fingerprint") == _fingerprint(path)):
            results[entry.video_id] = previous
            continue
        tasks.append(_CheckTask(entry.video_id, entry.video, str(path), entry.start_seconds, entry.end_seconds,
                                num_frames, backend))
    num_resumed = len(results)
    if num_resumed:
        logger.info("%s: %d of %d videos already checked; checking %d", progress_path, num_resumed, len(entries),
                    len(tasks))

    bar = progress_bar(len(tasks), "check", progress)
    num_bad_now = sum(1 for r in results.values() if r.get("status") == "bad")
    complete = False
    try:
        with progress_path.open("a", encoding="utf-8") as handle:

            def on_result(task: _CheckTask, record: dict[str, Any]) -> None:
                nonlocal num_bad_now
                results[task.video_id] = record
                append_jsonl(handle, record)
                if record["status"] == "bad":
                    num_bad_now += 1
                    logger.debug("bad video %s: %s", task.video, record["reason"])
                bar.update(1)
                bar.set_postfix(bad=num_bad_now, refresh=False)

            def on_crash(task: _CheckTask, reason: str) -> dict[str, Any]:
                return {"video_id": task.video_id, "video": task.video, "status": "bad", "reason": reason,
                        "fingerprint": _fingerprint(Path(task.path))}

            run_tasks(_check_one, tasks, workers, on_result, on_crash)
        complete = True
    finally:
        bar.close()
        seconds = time.perf_counter() - started
        report = _finish_check(manifest, splits, entries, results, out_dir, len(results) - num_resumed,
                               num_resumed, seconds, backend, complete)
    return report


def _finish_check(
    manifest: str | os.PathLike,
    splits: str | Sequence[str] | None,
    entries: list[ManifestEntry],
    results: dict[str, dict[str, Any]],
    out_dir: Path,
    num_checked: int,
    num_resumed: int,
    seconds: float,
    backend: str,
    complete: bool,
) -> CheckReport:
    """Write bad_videos.jsonl and summary.json from the results so far (also after an interrupt)."""
    bad = [
        {"video_id": e.video_id, "video": e.video, "reason": results[e.video_id].get("reason", "unknown")}
        for e in entries if e.video_id in results and results[e.video_id].get("status") == "bad"
    ]
    good = [results[e.video_id] for e in entries if e.video_id in results and results[e.video_id].get("status") == "ok"]
    write_jsonl(out_dir / BAD_VIDEOS_FILE, bad)
    resolutions = Counter(f"{r['width']}x{r['height']}" for r in good if "width" in r)
    frame_rates = Counter(f"{r['fps']:g}" for r in good if "fps" in r)
    warnings = [{"video_id": r["video_id"], "video": r["video"], "warning": r["warning"]}
                for r in good if r.get("warning")]
    summary = {
        "manifest": str(Path(manifest).resolve()),
        "splits": split_names(splits),
        "backend": backend,
        "complete": complete,
        "num_videos": len(entries),
        "num_done": len(results),
        "num_ok": len(good),
        "num_bad": len(bad),
        "num_checked_this_run": num_checked,
        "num_resumed": num_resumed,
        "bad_reasons": dict(Counter(reason_category(b["reason"]) for b in bad).most_common()),
        "resolutions": dict(resolutions.most_common(20)),
        "frame_rates": dict(frame_rates.most_common(20)),
        "total_clip_hours": round(sum(r.get("seconds", 0.0) for r in good) / 3600.0, 4),
        "warnings": warnings[:100],
        "num_warnings": len(warnings),
        "seconds": round(seconds, 3),
        "videos_per_second": round(num_checked / seconds, 3) if seconds > 0 else None,
    }
    atomic_write_text(out_dir / CHECK_SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return CheckReport(out_dir=out_dir, num_videos=len(entries), num_ok=len(good), num_checked=num_checked,
                       num_resumed=num_resumed, bad=bad, seconds=seconds, summary=summary)
