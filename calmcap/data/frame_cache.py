"""The frames cache: every clip of a manifest decoded once, resized and stored as uint8 frames.

:func:`cache_frames` decodes each clip once (honouring ``start_seconds`` / ``end_seconds``),
keeps every frame (or ``max_frames`` sampled uniformly from a longer clip), resizes the shorter
side to ``image_size`` (antialiased bicubic) and centre-crops, in torch with
:mod:`calmcap.data.transforms` (the exact evaluation transform of the dataset, minus the
normalisation), and stores uint8 ``[F, S, S, 3]`` (:mod:`calmcap.data.cache` describes the
format). Worker processes decode in parallel (:func:`calmcap.data.worker_pool.run_tasks`).

Resuming needs no progress file: cache writes are atomic, so a file that exists is complete and
is skipped. Bad videos never stop the pass; they are listed in ``bad_videos.jsonl`` next to the
cache and the pass goes on.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calmcap.constants import BAD_VIDEOS_FILE, FRAMES, MAX_FRAME_SIDE
from calmcap.data.cache import (
    CACHE_FORMAT_VERSION,
    CacheReport,
    cache_file,
    check_cache_meta,
    read_cache_meta,
    save_array,
    write_cache_meta,
)
from calmcap.data.jsonl import write_jsonl
from calmcap.data.manifest import read_manifest, resolve_video_path, split_names
from calmcap.data.video import check_backend
from calmcap.data.worker_pool import init_torch_worker, progress_bar, run_tasks
from calmcap.errors import CalmcapError

logger = logging.getLogger(__name__)

# Frames kept per clip when a clip is longer (sampled uniformly); also the features cache's default.
DEFAULT_MAX_FRAMES = 64


def decode_for_cache(
    path: str | os.PathLike,
    image_size: int,
    max_frames: int = DEFAULT_MAX_FRAMES,
    start_seconds: float | None = None,
    end_seconds: float | None = None,
    backend: str = "auto",
    max_side: int | None = MAX_FRAME_SIDE,
    num_threads: int = 1,
) -> np.ndarray:
    """Every frame of a clip (or ``max_frames`` sampled uniformly), resized and centre-cropped.

    The clip's frame window comes from :func:`calmcap.data.video.seconds_to_frame_window`; when
    it holds ``L <= max_frames`` frames all are kept, otherwise ``max_frames`` segment middles
    (:func:`calmcap.data.video.sample_indices`, "uniform"). Frames are resized shorter side to
    ``image_size`` (antialiased bicubic on uint8, as the dataset's evaluation transform) and
    centre-cropped, so the dataset's transform of a cached clip is the transform of the decoded
    clip.

    Returns:
        uint8 ``[F, S, S, 3]`` with ``F = min(L, max_frames)`` and ``S = image_size``.

    Raises:
        VideoDecodeError: the video cannot be decoded.
    """
    from calmcap.data.transforms import Resize, center_crop, to_video_tensor
    from calmcap.data.video import probe_video, read_frames, seconds_to_frame_window

    if max_frames < 1:
        raise ValueError(f"max_frames must be positive, got {max_frames}")
    info = probe_video(path, backend=backend)  # type: ignore[arg-type]
    start, end = seconds_to_frame_window(info.num_frames, info.fps, start_seconds, end_seconds)
    count = min(end - start, max_frames)
    frames, mask = read_frames(path, count, "uniform", start_seconds, end_seconds, backend=backend,  # type: ignore[arg-type]
                               max_side=max_side, num_threads=num_threads)
    # The backend that decoded may count frames differently from the one that probed (rare);
    # padding slots are copies, never cached as frames of their own.
    frames = frames[mask]
    video = to_video_tensor(frames)  # uint8 [F, 3, H, W], channels-last view
    video = center_crop(Resize(image_size, "shortest", "bicubic")(video), image_size)
    return np.ascontiguousarray(video.permute(0, 2, 3, 1).numpy())


@dataclass(frozen=True)
class _FrameTask:
    video_id: str
    video: str
    path: str
    start_seconds: float | None
    end_seconds: float | None
    out_path: str
    image_size: int
    max_frames: int
    backend: str
    max_side: int | None


def _cache_frames_one(task: _FrameTask) -> dict[str, Any]:
    """Decode, resize and store one clip (runs in a worker). Never raises."""
    record: dict[str, Any] = {"video_id": task.video_id, "video": task.video}
    try:
        frames = decode_for_cache(task.path, task.image_size, task.max_frames, task.start_seconds, task.end_seconds,
                             task.backend, task.max_side, num_threads=1)
        save_array(Path(task.out_path), frames)
        record.update(status="ok", num_frames=int(frames.shape[0]))
    except CalmcapError as error:
        record.update(status="bad", reason=getattr(error, "reason", str(error)))
    except Exception as error:
        record.update(status="bad", reason=f"unexpected {type(error).__name__}: {' '.join(str(error).split())[:200]}")
    return record


def cache_frames(
    manifest: str | os.PathLike,
    cache_dir: str | os.PathLike,
    image_size: int,
    splits: str | Sequence[str] | None = None,
    max_frames: int = DEFAULT_MAX_FRAMES,
    workers: int = 2,
    progress: bool = True,
    backend: str = "auto",
    max_side: int | None = MAX_FRAME_SIDE,
    overwrite: bool = False,
) -> CacheReport:
    """Decode every clip once and store its frames: uint8 ``[F, S, S, 3]`` per video.

    See :func:`decode_for_cache` for what is stored and :mod:`calmcap.data.cache` for the layout
    (``cache_file(cache_dir, "frames", video_id)``). ``workers`` spawned processes decode in
    parallel (0 or 1: in this process). Videos whose file exists are skipped (resume); a cache
    made with another ``image_size`` or ``max_frames`` is an error unless ``overwrite``, which
    rewrites every file. Bad videos are listed in ``<cache_dir>/frames/bad_videos.jsonl``.

    The metadata (``<cache_dir>/frames/cache.json``) records ``image_size``, ``max_frames``,
    the manifest, the splits and ``count`` (videos of this selection in the cache); it is
    written before the pass (``complete: false``) and after it.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if max_frames < 1:
        raise ValueError(f"max_frames must be positive, got {max_frames}")
    check_backend(backend)
    started = time.perf_counter()
    cache_dir = Path(cache_dir)
    entries = read_manifest(manifest, splits)
    settings = {"image_size": int(image_size), "max_frames": int(max_frames), "format_version": CACHE_FORMAT_VERSION}
    if not overwrite:
        check_cache_meta(read_cache_meta(cache_dir, FRAMES), settings, cache_dir, FRAMES)
    meta = {
        **settings,
        "kind": FRAMES,
        "layout": "uint8 [F, S, S, 3]: every frame of the clip, or max_frames sampled uniformly; shorter side "
                  "resized to S (bicubic, antialiased), centre crop",
        "manifest": str(Path(manifest).resolve()),
        "splits": split_names(splits),
        "backend": backend,
        "max_side": max_side,
        "complete": False,
    }
    write_cache_meta(cache_dir, FRAMES, meta)

    tasks = []
    num_skipped = 0
    for entry in entries:
        out_path = cache_file(cache_dir, FRAMES, entry.video_id)
        if not overwrite and out_path.is_file():
            num_skipped += 1
            continue
        tasks.append(_FrameTask(entry.video_id, entry.video, str(resolve_video_path(manifest, entry)),
                                entry.start_seconds, entry.end_seconds, str(out_path), int(image_size),
                                int(max_frames), backend, max_side))
    if num_skipped:
        logger.info("%s: %d of %d videos already cached", cache_dir / FRAMES, num_skipped, len(entries))

    bad: dict[str, dict[str, str]] = {}
    num_written = 0
    bar = progress_bar(len(tasks), "cache frames", progress)

    def on_result(task: _FrameTask, record: dict[str, Any]) -> None:
        nonlocal num_written
        if record["status"] == "ok":
            num_written += 1
        else:
            bad[task.video_id] = {"video_id": task.video_id, "video": task.video, "reason": record["reason"]}
            logger.debug("bad video %s: %s", task.video, record["reason"])
        bar.update(1)
        bar.set_postfix(bad=len(bad), refresh=False)

    def on_crash(task: _FrameTask, reason: str) -> dict[str, Any]:
        return {"video_id": task.video_id, "video": task.video, "status": "bad", "reason": reason}

    try:
        run_tasks(_cache_frames_one, tasks, workers, on_result, on_crash, initializer=init_torch_worker)
    finally:
        bar.close()
    bad_list = [bad[e.video_id] for e in entries if e.video_id in bad]
    write_jsonl(cache_dir / FRAMES / BAD_VIDEOS_FILE, bad_list)
    meta.update(complete=True, count=num_written + num_skipped, num_bad=len(bad_list))
    write_cache_meta(cache_dir, FRAMES, meta)
    seconds = time.perf_counter() - started
    logger.info("cached frames of %d videos (%d new, %d bad) in %.1f s", num_written + num_skipped, num_written,
                len(bad_list), seconds)
    return CacheReport(FRAMES, cache_dir, len(entries), num_written, num_skipped, bad_list, seconds, meta)
