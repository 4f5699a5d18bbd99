"""Preparation at scale: check every video of a manifest, and cache frames or frozen-tower features.

Three passes, each parallel, resumable and with a progress bar (tqdm on stderr, with rate and ETA):

* :func:`check_videos` opens every video (probe + decode a few frames, one decoder thread per
  worker process) and writes ``bad_videos.jsonl`` (``{"video_id", "video", "reason"}``) and
  ``summary.json`` into an output folder. A ``progress.jsonl`` there (one line per finished
  video) lets a re-run skip what is done; a video whose file changed since (size or mtime) is
  checked again.
* :func:`cache_frames` decodes each clip once (honouring ``start_seconds`` / ``end_seconds``),
  keeps every frame (or ``max_frames`` sampled uniformly from a longer clip), resizes the
  shorter side to ``image_size`` (antialiased bicubic) and centre-crops, in torch with
  :mod:`calmcap.data.transforms` (the exact evaluation transform of the dataset, minus the
  normalisation), and stores uint8 ``[F, S, S, 3]`` in the frames cache
  (:mod:`calmcap.data.cache` describes the format).
* :func:`cache_features` runs a frozen image tower over those frames (read from the frames
  cache when present, decoded otherwise) and stores float16 ``[F, D]`` in the features cache.
  The cache's metadata records the tower (architecture and a fingerprint of its weights,
  :func:`tower_fingerprint`) so that :func:`check_feature_cache` can refuse features of another
  tower.

Resuming the caches needs no progress file: cache writes are atomic, so a file that exists is
complete and is skipped. Bad videos never stop a pass; they are listed (``bad_videos.jsonl``
next to the cache) and the pass goes on.

Worker processes are started with ``spawn`` (the caller may hold torch threads or open decoders
that a fork would copy) and each one decodes with one thread (one process per core). A worker
that dies (a decoder crash on a corrupt file) does not end the pass: the videos it had in hand
are retried one at a time in a fresh process, and the one that kills it again is listed as bad.

The command-line entries :func:`check_main` (``calmcap check``) and :func:`cache_main`
(``calmcap cache``) print their summaries; the library functions only log.

**Models for ``calmcap cache --features``.** ``--model`` takes a checkpoint directory (loaded
with :meth:`CALMModel.from_pretrained`) or a registered model name. For a name, only the CLIP
image tower is built (:func:`calmcap.models.encoders.build_clip`), wrapped in
:class:`ImageTower`: no caption tokenizer is needed. A name whose tower has no pretrained
weights (``clip.pretrained: null``, e.g. ``calmcap-tiny``) is refused: a randomly initialised
tower's features would match no model one could train or load later.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np

from calmcap.data.cache import FEATURES, FRAMES, cache_file, load_array, read_cache_meta, save_array, write_cache_meta
from calmcap.data.manifest import ManifestEntry, read_manifest, resolve_video_path
from calmcap.data.transforms import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from calmcap.errors import CalmcapError

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

PROGRESS_FILE = "progress.jsonl"
BAD_VIDEOS_FILE = "bad_videos.jsonl"
SUMMARY_FILE = "summary.json"
# Frames decoded per video by `check_videos`: enough to reach into the file (segment middles
# spread over the clip), few enough to keep a pass over 100k videos short.
DEFAULT_CHECK_FRAMES = 4
DEFAULT_MAX_FRAMES = 64
# Same default as VideoSource.max_side: decoded frames must match the dataset's decoding path.
DEFAULT_MAX_SIDE = 1280
# Tasks queued per worker process: keeps workers busy without holding the whole manifest in
# flight (a crash then only puts this many videos under suspicion).
_TASKS_PER_WORKER = 4
CACHE_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------


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
        return self.out_dir / SUMMARY_FILE


@dataclass
class CacheReport:
    """Outcome of :func:`cache_frames` / :func:`cache_features`.

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


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def _select(manifest: str | os.PathLike, splits: str | Sequence[str] | None) -> list[ManifestEntry]:
    return read_manifest(manifest, splits)


def _splits_list(splits: str | Sequence[str] | None) -> list[str] | None:
    if splits is None:
        return None
    return [splits] if isinstance(splits, str) else list(splits)


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


def _progress_bar(total: int, desc: str, enabled: bool, unit: str = "video") -> Any:
    from tqdm import tqdm  # local: keeps `calmcap --help` fast

    # tqdm's default bar shows count, rate and ETA; smoothing=0.1 steadies the ETA.
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                smoothing=0.1)


def _worker_init() -> None:
    """Each worker process uses one thread everywhere: one process per core is the parallelism."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _worker_init_torch() -> None:
    _worker_init()
    import torch

    torch.set_num_threads(1)


def run_tasks(
    fn: Callable[[Any], dict[str, Any]],
    tasks: Iterable[Any],
    workers: int,
    on_result: Callable[[Any, dict[str, Any]], None],
    on_crash: Callable[[Any, str], dict[str, Any]],
    initializer: Callable[[], None] = _worker_init,
) -> None:
    """Run ``fn(task)`` for every task, in ``workers`` spawned processes (0 or 1: in this process).

    ``fn`` must be a module-level function that catches its own errors and returns a small dict
    (results travel back through a pipe; big arrays are written to disk by the worker).
    ``on_result(task, result)`` is called in this process, in completion order. When a worker
    process dies, the tasks it may have been running are retried one at a time in a fresh
    process; a task that kills its process again gets ``on_crash(task, reason)`` as its result.
    """
    tasks = list(tasks)
    if workers <= 1:
        for task in tasks:
            on_result(task, fn(task))
        return

    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context("spawn")

    def make_pool(n: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=n, mp_context=context, initializer=initializer)

    pending: deque[Any] = deque(tasks)
    suspects: deque[Any] = deque()
    while pending or suspects:
        if suspects:
            # Isolation: one suspect at a time, so a crash names its video.
            pool = make_pool(1)
            try:
                while suspects:
                    task = suspects.popleft()
                    try:
                        result = pool.submit(fn, task).result()
                    except BrokenProcessPool:
                        logger.warning("a worker process died on task %r", task)
                        result = on_crash(task, "the decoder crashed (worker process died)")
                        pool.shutdown(wait=True, cancel_futures=True)
                        pool = make_pool(1)
                    on_result(task, result)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            continue
        pool = make_pool(workers)
        in_flight: dict[Any, Any] = {}
        try:
            while pending or in_flight:
                while pending and len(in_flight) < workers * _TASKS_PER_WORKER:
                    task = pending.popleft()
                    in_flight[pool.submit(fn, task)] = task
                done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
                for future in done:
                    task = in_flight.pop(future)
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        suspects.append(task)
                        continue
                    on_result(task, result)
                if suspects:
                    raise BrokenProcessPool("a worker process died")
        except BrokenProcessPool:
            suspects.extend(in_flight.values())
            logger.warning("a worker process died; retrying %d video(s) one at a time", len(suspects))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _check_backend(backend: str) -> None:
    from calmcap.data.video import BACKENDS

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _append_jsonl(handle: Any, record: dict[str, Any]) -> None:
    handle.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
    handle.flush()  # a crash loses at most the line being written; torn lines are skipped on read


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; a torn or malformed line (an interrupted write) is skipped."""
    records = []
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


def _write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# check_videos
# ---------------------------------------------------------------------------------------------


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
            backend=task.backend, max_side=DEFAULT_MAX_SIDE, num_threads=1,  # type: ignore[arg-type]
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
    _check_backend(backend)
    if num_frames < 1:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    started = time.perf_counter()
    entries = _select(manifest, splits)
    out_dir = Path(out) if out is not None else default_check_dir(manifest)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress_path = out_dir / PROGRESS_FILE

    done: dict[str, dict[str, Any]] = {}
    for record in _read_jsonl(progress_path):
        if "video_id" in record and record.get("status") in ("ok", "bad"):
            done[record["video_id"]] = record  # later lines win (a re-check after a change)
    tasks: list[_CheckTask] = []
    results: dict[str, dict[str, Any]] = {}
    for entry in entries:
        path = resolve_video_path(manifest, entry)
        previous = done.get(entry.video_id)
        if previous is not None and previous.get("video") == entry.video and previous.get("fingerprint") == _fingerprint(path):
            results[entry.video_id] = previous
            continue
        tasks.append(_CheckTask(entry.video_id, entry.video, str(path), entry.start_seconds, entry.end_seconds,
                                num_frames, backend))
    num_resumed = len(results)
    if num_resumed:
        logger.info("%s: %d of %d videos already checked; checking %d", progress_path, num_resumed, len(entries), len(tasks))

    bar = _progress_bar(len(tasks), "check", progress)
    num_bad_now = sum(1 for r in results.values() if r.get("status") == "bad")
    complete = False
    try:
        with progress_path.open("a", encoding="utf-8") as handle:

            def on_result(task: _CheckTask, record: dict[str, Any]) -> None:
                nonlocal num_bad_now
                results[task.video_id] = record
                _append_jsonl(handle, record)
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
    _write_jsonl(out_dir / BAD_VIDEOS_FILE, bad)
    resolutions = Counter(f"{r['width']}x{r['height']}" for r in good if "width" in r)
    frame_rates = Counter(f"{r['fps']:g}" for r in good if "fps" in r)
    warnings = [{"video_id": r["video_id"], "video": r["video"], "warning": r["warning"]} for r in good if r.get("warning")]
    summary = {
        "manifest": str(Path(manifest).resolve()),
        "splits": _splits_list(splits),
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
    _write_json(out_dir / SUMMARY_FILE, summary)
    return CheckReport(out_dir=out_dir, num_videos=len(entries), num_ok=len(good), num_checked=num_checked,
                       num_resumed=num_resumed, bad=bad, seconds=seconds, summary=summary)


# ---------------------------------------------------------------------------------------------
# Decoding a whole clip at the cache's size
# ---------------------------------------------------------------------------------------------


def decode_clip(
    path: str | os.PathLike,
    image_size: int,
    max_frames: int = DEFAULT_MAX_FRAMES,
    start_seconds: float | None = None,
    end_seconds: float | None = None,
    backend: str = "auto",
    max_side: int | None = DEFAULT_MAX_SIDE,
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


# ---------------------------------------------------------------------------------------------
# cache_frames
# ---------------------------------------------------------------------------------------------


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
        frames = decode_clip(task.path, task.image_size, task.max_frames, task.start_seconds, task.end_seconds,
                             task.backend, task.max_side, num_threads=1)
        save_array(Path(task.out_path), frames)
        record.update(status="ok", num_frames=int(frames.shape[0]))
    except CalmcapError as error:
        record.update(status="bad", reason=getattr(error, "reason", str(error)))
    except Exception as error:
        record.update(status="bad", reason=f"unexpected {type(error).__name__}: {' '.join(str(error).split())[:200]}")
    return record


def _check_meta(existing: dict[str, Any] | None, wanted: dict[str, Any], cache_dir: Path, kind: str) -> None:
    if existing is None:
        return
    for key, value in wanted.items():
        if key in existing and existing[key] != value:
            raise CalmcapError(
                f"{cache_dir / kind}: the cache was made with {key}={existing[key]!r}, not {value!r}; "
                f"use another cache directory or pass overwrite=True (--overwrite) to rebuild it"
            )


def cache_frames(
    manifest: str | os.PathLike,
    cache_dir: str | os.PathLike,
    image_size: int,
    splits: str | Sequence[str] | None = None,
    max_frames: int = DEFAULT_MAX_FRAMES,
    workers: int = 2,
    progress: bool = True,
    backend: str = "auto",
    max_side: int | None = DEFAULT_MAX_SIDE,
    overwrite: bool = False,
) -> CacheReport:
    """Decode every clip once and store its frames: uint8 ``[F, S, S, 3]`` per video.

    See :func:`decode_clip` for what is stored and :mod:`calmcap.data.cache` for the layout
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
    _check_backend(backend)
    started = time.perf_counter()
    cache_dir = Path(cache_dir)
    entries = _select(manifest, splits)
    settings = {"image_size": int(image_size), "max_frames": int(max_frames), "format_version": CACHE_FORMAT_VERSION}
    if not overwrite:
        _check_meta(read_cache_meta(cache_dir, FRAMES), settings, cache_dir, FRAMES)
    meta = {
        **settings,
        "kind": FRAMES,
        "layout": "uint8 [F, S, S, 3]: every frame of the clip, or max_frames sampled uniformly; shorter side "
                  "resized to S (bicubic, antialiased), centre crop",
        "manifest": str(Path(manifest).resolve()),
        "splits": _splits_list(splits),
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
    bar = _progress_bar(len(tasks), "cache frames", progress)

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
        run_tasks(_cache_frames_one, tasks, workers, on_result, on_crash, initializer=_worker_init_torch)
    finally:
        bar.close()
    bad_list = [bad[e.video_id] for e in entries if e.video_id in bad]
    _write_jsonl(cache_dir / FRAMES / BAD_VIDEOS_FILE, bad_list)
    meta.update(complete=True, count=num_written + num_skipped, num_bad=len(bad_list))
    write_cache_meta(cache_dir, FRAMES, meta)
    seconds = time.perf_counter() - started
    logger.info("cached frames of %d videos (%d new, %d bad) in %.1f s", num_written + num_skipped, num_written,
                len(bad_list), seconds)
    return CacheReport(FRAMES, cache_dir, len(entries), num_written, num_skipped, bad_list, seconds, meta)


# ---------------------------------------------------------------------------------------------
# cache_features
# ---------------------------------------------------------------------------------------------


def _image_tower(model: "nn.Module") -> "nn.Module":
    clip = getattr(model, "clip", None)
    visual = getattr(clip, "visual", None)
    return visual if visual is not None else model


def tower_fingerprint(model: "nn.Module") -> str:
    """``"sha256:<hex>"`` of the image tower's weights (``model.clip.visual``, else ``model``).

    Names, dtypes, shapes and bytes of every tensor of the state dict enter the hash, so a
    tower with other weights (another checkpoint, another pretrained tag, fine-tuned) gets
    another fingerprint. ~1 s for ViT-B/32 on CPU.
    """
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(_image_tower(model).state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def _tower_description(model: "nn.Module") -> dict[str, Any]:
    config = getattr(model, "config", None)
    clip_config = getattr(config, "clip", None)
    return {
        "arch": getattr(clip_config, "arch", type(_image_tower(model)).__name__),
        "pretrained": getattr(clip_config, "pretrained", None),
        "model": getattr(config, "name", None),
        "fingerprint": tower_fingerprint(model),
    }


def check_feature_cache(cache_dir: str | os.PathLike, model: "nn.Module") -> dict[str, Any]:
    """Verify that a features cache was made by ``model``'s image tower; returns its metadata.

    Raises:
        CalmcapError: no features cache there, or it was made by another tower (different
            weights), or at another image size.
    """
    meta = read_cache_meta(cache_dir, FEATURES)
    if meta is None:
        raise CalmcapError(f"{Path(cache_dir) / FEATURES}: no features cache (run `calmcap cache --features`)")
    fingerprint = tower_fingerprint(model)
    cached = (meta.get("tower") or {}).get("fingerprint")
    if cached != fingerprint:
        raise CalmcapError(
            f"{Path(cache_dir) / FEATURES}: features were made by another image tower "
            f"({(meta.get('tower') or {}).get('arch')}, {cached}) than this model's ({fingerprint}); "
            f"rebuild the cache with this model"
        )
    image_size = getattr(getattr(model, "config", None), "image_size", None)
    if image_size is not None and meta.get("image_size") != image_size:
        raise CalmcapError(f"{Path(cache_dir) / FEATURES}: features at image_size {meta.get('image_size')}, model wants {image_size}")
    return meta


class ImageTower:
    """The part of a CALM model that :func:`cache_features` needs: a CLIP model's image tower.

    Built from a registered model name without a caption tokenizer (see the module docstring).
    ``encode_frames(video [B, T, 3, H, W] float) -> [B, T, D]``, as :meth:`CALMModel.encode_frames`.
    """

    def __init__(self, config: Any, clip_model: "nn.Module") -> None:
        self.config = config
        self.clip = clip_model

    @classmethod
    def from_config(cls, config: Any) -> "ImageTower":
        from calmcap.models.encoders import build_clip

        clip_model = build_clip(config.clip, config.image_size)
        clip_model.eval()
        return cls(config, clip_model)

    def encode_frames(self, video: "torch.Tensor") -> "torch.Tensor":
        batch, num_frames = video.shape[:2]
        return self.clip.encode_image(video.flatten(0, 1)).view(batch, num_frames, -1)

    # The small slice of nn.Module that cache_features uses.
    def parameters(self) -> Iterable["torch.nn.Parameter"]:
        return self.clip.parameters()

    def state_dict(self) -> dict[str, "torch.Tensor"]:
        return self.clip.state_dict()

    @property
    def training(self) -> bool:
        return self.clip.training

    def train(self, mode: bool = True) -> "ImageTower":
        self.clip.train(mode)
        return self

    def eval(self) -> "ImageTower":
        return self.train(False)

    def to(self, device: Any) -> "ImageTower":
        self.clip.to(device)
        return self


def _numpy_dtype(dtype: Any) -> np.dtype:
    """numpy dtype of ``np.float16``, ``"float16"`` or ``torch.float16`` alike (floating only)."""
    if type(dtype).__module__ == "torch":  # a torch.dtype: "torch.float16" -> "float16"
        dtype = str(dtype).removeprefix("torch.")
    result = np.dtype(dtype)
    if result.kind != "f":
        raise ValueError(f"features need a floating dtype, got {result}")
    return result


class _ClipFrames:
    """Map-style dataset for cache_features: item i -> (i, uint8 frames [F, S, S, 3] or error)."""

    def __init__(self, manifest: Path, entries: list[ManifestEntry], cache_dir: Path, use_frame_cache: bool,
                 image_size: int, max_frames: int, backend: str, max_side: int | None) -> None:
        self.manifest, self.entries, self.cache_dir = manifest, entries, cache_dir
        self.use_frame_cache, self.image_size, self.max_frames = use_frame_cache, image_size, max_frames
        self.backend, self.max_side = backend, max_side

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, str | None, bool]:
        entry = self.entries[index]
        if self.use_frame_cache:
            path = cache_file(self.cache_dir, FRAMES, entry.video_id)
            if path.is_file():
                try:
                    return index, load_array(path), None, True
                except (OSError, ValueError) as error:
                    logger.warning("%s: unreadable frames cache file (%s); decoding the video", path, error)
        try:
            frames = decode_clip(resolve_video_path(self.manifest, entry), self.image_size, self.max_frames,
                                 entry.start_seconds, entry.end_seconds, self.backend, self.max_side)
            return index, frames, None, False
        except CalmcapError as error:
            return index, None, getattr(error, "reason", str(error)), False


def cache_features(
    model: Any,
    manifest: str | os.PathLike,
    cache_dir: str | os.PathLike,
    splits: str | Sequence[str] | None = None,
    batch_size: int = 256,
    progress: bool = True,
    dtype: Any = np.float16,
    max_frames: int | None = None,
    mean: Sequence[float] = OPENAI_DATASET_MEAN,
    std: Sequence[float] = OPENAI_DATASET_STD,
    workers: int = 0,
    backend: str = "auto",
    max_side: int | None = DEFAULT_MAX_SIDE,
    overwrite: bool = False,
) -> CacheReport:
    """Run a frozen image tower over every clip and store its frame features: ``[F, D]`` per video.

    For each video, the frames come from the frames cache in the same ``cache_dir`` when it has
    the model's image size (else the clip is decoded as :func:`cache_frames` would, with
    ``max_frames``, default the frames cache's or 64), are normalised with ``mean`` / ``std``
    and go through ``model.encode_frames`` under ``torch.no_grad`` in batches of ``batch_size``
    frames (frames of several videos share a batch). Features are stored as ``dtype``
    (float16) at ``cache_file(cache_dir, "features", video_id)``.

    Args:
        model: a :class:`CALMModel` (or :class:`ImageTower`): ``encode_frames``,
            ``config.image_size`` and ``clip.visual`` are used. It runs on the device of its
            parameters, in eval mode (its mode is restored afterwards).
        workers: DataLoader workers that read / decode frames while the tower runs (0: in
            this process).
        overwrite: recompute every file, even those made by another tower.

    The metadata (``<cache_dir>/features/cache.json``) records the tower (``arch``,
    ``pretrained``, ``fingerprint`` from :func:`tower_fingerprint`), ``image_size``, ``mean``,
    ``std``, ``dtype``, ``embed_dim``, ``max_frames`` and ``count``. Resuming skips existing files;
    a cache made by another tower or image size is an error unless ``overwrite``.
    """
    import torch
    from torch.utils.data import DataLoader

    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    _check_backend(backend)
    started = time.perf_counter()
    cache_dir = Path(cache_dir)
    manifest = Path(manifest)
    entries = _select(manifest, splits)
    image_size = int(model.config.image_size)
    np_dtype = _numpy_dtype(dtype)
    frame_meta = read_cache_meta(cache_dir, FRAMES)
    use_frame_cache = frame_meta is not None and frame_meta.get("image_size") == image_size
    if frame_meta is not None and not use_frame_cache:
        logger.warning("%s holds frames at image_size %s, not the model's %d; decoding videos instead",
                       cache_dir / FRAMES, frame_meta.get("image_size"), image_size)
    if use_frame_cache and frame_meta is not None and max_frames is not None and frame_meta.get("max_frames") != max_frames:
        logger.warning("%s holds up to %s frames per clip, not max_frames=%d; decoding videos instead",
                       cache_dir / FRAMES, frame_meta.get("max_frames"), max_frames)
        use_frame_cache = False
    if max_frames is None:
        max_frames = int(frame_meta["max_frames"]) if use_frame_cache and frame_meta else DEFAULT_MAX_FRAMES

    tower = _tower_description(model)
    settings = {"image_size": image_size, "tower": tower, "mean": [float(m) for m in mean],
                "std": [float(s) for s in std], "dtype": np_dtype.name, "max_frames": int(max_frames),
                "format_version": CACHE_FORMAT_VERSION}
    existing = read_cache_meta(cache_dir, FEATURES)
    if not overwrite and existing is not None:
        if (existing.get("tower") or {}).get("fingerprint") != tower["fingerprint"]:
            raise CalmcapError(
                f"{cache_dir / FEATURES}: the cache holds features of another image tower "
                f"({(existing.get('tower') or {}).get('arch')}, {(existing.get('tower') or {}).get('fingerprint')}); "
                f"use another cache directory or pass overwrite=True (--overwrite) to rebuild it"
            )
        _check_meta(existing, {k: v for k, v in settings.items() if k != "tower"}, cache_dir, FEATURES)
    meta: dict[str, Any] = {
        **settings,
        "kind": FEATURES,
        "layout": f"{np_dtype.name} [F, D]: the image tower's features of the frames cache's frames",
        "frames_from": "frames cache" if use_frame_cache else "decoded",
        "manifest": str(manifest.resolve()),
        "splits": _splits_list(splits),
        "complete": False,
    }
    write_cache_meta(cache_dir, FEATURES, meta)

    todo = [i for i, e in enumerate(entries) if overwrite or not cache_file(cache_dir, FEATURES, e.video_id).is_file()]
    num_skipped = len(entries) - len(todo)
    dataset = _ClipFrames(manifest, [entries[i] for i in todo], cache_dir, use_frame_cache, image_size, max_frames,
                          backend, max_side)
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                        prefetch_factor=4 if workers > 0 else None)

    parameters = list(model.parameters())
    device = parameters[0].device if parameters else torch.device("cpu")
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    was_training = model.training
    model.eval()
    bad: dict[str, dict[str, str]] = {}
    num_written = 0
    embed_dim: int | None = None
    queue: list[tuple[ManifestEntry, np.ndarray]] = []
    queued_frames = 0
    bar = _progress_bar(len(todo), "cache features", progress)

    def flush() -> None:
        # One forward for the queued clips: [1, sum F, 3, S, S] -> [sum F, D], split per clip.
        nonlocal queued_frames, num_written, embed_dim
        if not queue:
            return
        frames = torch.from_numpy(np.concatenate([f for _, f in queue])).to(device)  # uint8 [N, S, S, 3]
        video = frames.permute(0, 3, 1, 2).float().div_(255.0).sub_(mean_t).div_(std_t)
        outputs = []
        with torch.no_grad():
            for start in range(0, len(video), batch_size):
                chunk = video[start:start + batch_size]
                outputs.append(model.encode_frames(chunk.unsqueeze(0))[0].float().cpu())
        features = torch.cat(outputs).numpy()
        embed_dim = int(features.shape[-1])
        offset = 0
        for entry, clip in queue:
            save_array(cache_file(cache_dir, FEATURES, entry.video_id), features[offset:offset + len(clip)].astype(np_dtype))
            offset += len(clip)
            num_written += 1
        bar.update(len(queue))
        queue.clear()
        queued_frames = 0

    try:
        for index, frames, reason, _from_cache in loader:
            entry = dataset.entries[index]
            if frames is None:
                bad[entry.video_id] = {"video_id": entry.video_id, "video": entry.video, "reason": reason or "unknown"}
                bar.update(1)
                bar.set_postfix(bad=len(bad), refresh=False)
                continue
            frames = frames.numpy() if isinstance(frames, torch.Tensor) else frames
            queue.append((entry, frames))
            queued_frames += len(frames)
            if queued_frames >= batch_size:
                flush()
        flush()
    finally:
        bar.close()
        model.train(was_training)
    bad_list = [bad[e.video_id] for e in entries if e.video_id in bad]
    _write_jsonl(cache_dir / FEATURES / BAD_VIDEOS_FILE, bad_list)
    if embed_dim is None and num_skipped:
        embed_dim = int(load_array(cache_file(cache_dir, FEATURES, next(
            e.video_id for e in entries if cache_file(cache_dir, FEATURES, e.video_id).is_file())), mmap=True).shape[-1])
    meta.update(complete=True, count=num_written + num_skipped, num_bad=len(bad_list), embed_dim=embed_dim)
    write_cache_meta(cache_dir, FEATURES, meta)
    seconds = time.perf_counter() - started
    logger.info("cached features of %d videos (%d new, %d bad) in %.1f s", num_written + num_skipped, num_written,
                len(bad_list), seconds)
    return CacheReport(FEATURES, cache_dir, len(entries), num_written, num_skipped, bad_list, seconds, meta)


def load_feature_model(name_or_checkpoint: str, device: str = "cpu") -> Any:
    """A model for :func:`cache_features` from a checkpoint directory or a registered name.

    A directory loads with :meth:`CALMModel.from_pretrained`. A name builds only its CLIP image
    tower (:class:`ImageTower`); names whose tower has no pretrained weights are refused (see
    the module docstring).
    """
    path = Path(name_or_checkpoint)
    if path.is_dir():
        from calmcap.models.calm import CALMModel

        return CALMModel.from_pretrained(path, device=device)
    from calmcap.config import get_model_config

    config = get_model_config(name_or_checkpoint)
    if config.clip.pretrained is None:
        raise CalmcapError(
            f"model {name_or_checkpoint!r} has a randomly initialised image tower (clip.pretrained: null): its "
            f"features would match no model trained or loaded later. Pass a checkpoint directory, or a model "
            f"whose CLIP weights are pretrained"
        )
    return ImageTower.from_config(config).to(device)


def check_main(argv: Sequence[str] | None = None) -> int:
    """``calmcap check`` (its parser and output live with the CLI: :mod:`calmcap.cli_data`)."""
    from calmcap.cli_data import check_main as run

    return run(argv)


def cache_main(argv: Sequence[str] | None = None) -> int:
    """``calmcap cache`` (its parser and output live with the CLI: :mod:`calmcap.cli_data`)."""
    from calmcap.cli_data import cache_main as run

    return run(argv)


__all__ = [
    "CacheReport",
    "CheckReport",
    "ImageTower",
    "cache_features",
    "cache_frames",
    "cache_main",
    "check_feature_cache",
    "check_main",
    "check_videos",
    "decode_clip",
    "default_check_dir",
    "load_feature_model",
    "reason_category",
    "run_tasks",
    "tower_fingerprint",
]
