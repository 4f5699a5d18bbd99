"""Video decoding and frame sampling (docs/DESIGN.md section 4, "Decoding and frame sampling").

Two decoders sit behind one function, :func:`read_frames`:

* ``"decord"``: ``decord.VideoReader`` + ``get_batch``, frame-accurate sparse reads (decord
  indexes every packet when it opens a file and seeks to the keyframe before each wanted frame).
* ``"pyav"``: PyAV (FFmpeg). The packet index is built by demuxing without decoding (cheap and
  cached); each wanted frame is reached by seeking to the keyframe at or before it and decoding
  forward, and frames are identified by their presentation timestamp, so the result is the same
  frame decord returns. Any surprise (a frame without timestamp, a seek that overshoots) makes
  it fall back to plain sequential decoding from the start, which is always right.
* ``"auto"`` (default): decord, then PyAV when decord cannot open or read the file (decord's
  bundled FFmpeg has no AV1 decoder, for one).

Frame ``i`` of a video is the ``i``-th frame in presentation order and is taken to start at
``i / fps`` seconds; both backends count frames the same way (one per video packet).

Every failure is a :class:`calmcap.errors.VideoDecodeError` whose message is
``"<path>: <one-line reason>"``. Frames are never fabricated: a wanted frame that cannot be
decoded is an error, not a black or repeated image.

decord and PyAV are imported inside the functions that use them, so importing this module
costs only numpy.

:func:`encode_video` writes test and benchmark videos with the FFmpeg binary that
``imageio-ffmpeg`` ships (no system ffmpeg needed).
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, NamedTuple, Union

import numpy as np

from calmcap.atomic import atomic_path, atomic_write_text
from calmcap.errors import CalmcapError, VideoDecodeError

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
Backend = Literal["auto", "decord", "pyav"]
SampleMode = Literal["uniform", "random"]

BACKENDS: tuple[str, ...] = ("auto", "decord", "pyav")
SAMPLE_MODES: tuple[str, ...] = ("uniform", "random")

# Entries in the in-process probe / index caches. A training run touches each video once per
# epoch; 4096 entries of a few hundred bytes each (PyAV indexes hold one int64 per frame) keep
# a whole MSR-VTT-sized split warm without holding on to much memory.
_CACHE_SIZE = 4096
_PROBE_CACHE_VERSION = 1


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds, as seen by one backend.

    ``num_frames`` counts frames in presentation order (one per video packet);
    ``duration_seconds`` is ``num_frames / fps``; ``keyframe_indices`` are frame indices of
    keyframes (sorted) or None when the backend cannot tell; ``backend`` is the backend that
    produced this record ("decord" or "pyav").
    """

    width: int
    height: int
    num_frames: int
    fps: float
    duration_seconds: float
    keyframe_indices: list[int] | None
    backend: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> VideoInfo:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in fields})


class _BackendError(Exception):
    """A backend could not decode the file; ``reason`` is one line. Internal: becomes a
    VideoDecodeError (or a fallback to the next backend)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def sample_indices(
    num_video_frames: int,
    num_frames: int,
    mode: SampleMode = "uniform",
    start_frame: int = 0,
    end_frame: int | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Choose ``num_frames`` frame indices from the window ``[start_frame, end_frame)``.

    Exactly: let ``L = end_frame - start_frame`` (``end_frame`` defaults to
    ``num_video_frames``; both are clamped into ``[0, num_video_frames]`` and the window must hold
    at least one frame) and ``n = num_frames``.

    * ``L >= n``: the window is cut into ``n`` contiguous integer segments with boundaries
      ``b_k = start_frame + floor(k * L / n)`` for ``k = 0..n``; every segment holds at least one
      frame, the segments cover the window exactly and do not overlap. ``"uniform"`` takes the
      middle frame of segment ``k``, ``b_k + (b_{k+1} - b_k) // 2`` (the later of the two middle
      frames when the segment has an even length; deterministic, for evaluation). ``"random"``
      takes a frame drawn uniformly from ``[b_k, b_{k+1})`` (for training). Either way the
      indices are strictly increasing and the mask is all True.
    * ``L < n``: every frame of the window is taken once, in order, and the list is padded to
      ``n`` by repeating the last frame, ``end_frame - 1``; the mask is True for the ``L`` real
      slots and False for the padding. ``mode`` and ``rng`` do not matter here.

    Args:
        num_video_frames: frames in the video (> 0).
        num_frames: how many indices to return (> 0).
        mode: "uniform" (segment middles) or "random" (random frame within each segment).
        start_frame, end_frame: the window, end exclusive.
        rng: numpy Generator for "random"; a fresh unseeded one when None.

    Returns:
        ``(indices, mask)``: ``indices`` int64 ``[num_frames]``, ``mask`` bool ``[num_frames]``.
    """
    if num_video_frames <= 0:
        raise ValueError(f"num_video_frames must be positive, got {num_video_frames}")
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    if mode not in SAMPLE_MODES:
        raise ValueError(f"mode must be one of {SAMPLE_MODES}, got {mode!r}")
    start = min(max(int(start_frame), 0), num_video_frames)
    end = num_video_frames if end_frame is None else min(max(int(end_frame), 0), num_video_frames)
    length = end - start
    if length <= 0:
        raise ValueError(
            f"empty frame window [{start_frame}, {end_frame}) in a video of {num_video_frames} frames"
        )

    if length < num_frames:
        real = np.arange(start, end, dtype=np.int64)
        indices = np.full(num_frames, end - 1, dtype=np.int64)
        indices[:length] = real
        mask = np.zeros(num_frames, dtype=bool)
        mask[:length] = True
        return indices, mask

    k = np.arange(num_frames + 1, dtype=np.int64)
    bounds = start + (k * length) // num_frames  # exact integer floor(k * L / n)
    lo, hi = bounds[:-1], bounds[1:]
    if mode == "uniform":
        indices = lo + (hi - lo) // 2
    else:
        rng = rng if rng is not None else np.random.default_rng()
        indices = rng.integers(lo, hi)  # hi exclusive, one draw per segment
    return indices.astype(np.int64), np.ones(num_frames, dtype=bool)


def seconds_to_frame_window(
    num_video_frames: int,
    fps: float,
    start_seconds: float | None = None,
    end_seconds: float | None = None,
) -> tuple[int, int]:
    """Map a time window in seconds to a frame window ``[start_frame, end_frame)``.

    Frame ``i`` covers ``[i / fps, (i + 1) / fps)``; the window keeps every frame that overlaps
    ``[start_seconds, end_seconds)``: ``start_frame = floor(start * fps)``,
    ``end_frame = ceil(end * fps)`` (with a 1e-6 frame tolerance so a boundary that is exactly a
    frame time does not pull in a neighbour through rounding). Both are clamped to the video;
    an annotation that starts at or after the end of the video (common in DiDeMo and
    ActivityNet annotations) is clamped to the last frame with a warning rather than failing,
    and a window that would be empty keeps one frame.
    """
    if fps <= 0 or not math.isfinite(fps):
        raise ValueError(f"fps must be positive and finite, got {fps}")
    eps = 1e-6
    start = 0 if start_seconds is None else int(math.floor(max(start_seconds, 0.0) * fps + eps))
    end = num_video_frames if end_seconds is None else int(math.ceil(end_seconds * fps - eps))
    if start_seconds is not None and end_seconds is not None and end_seconds < start_seconds:
        raise ValueError(f"end_seconds ({end_seconds}) is before start_seconds ({start_seconds})")
    if start >= num_video_frames:
        logger.warning(
            "clip start %.3fs is past the end of the video (%d frames at %.3f fps); using the last frame",
            start_seconds, num_video_frames, fps,
        )
        start = num_video_frames - 1
    end = min(max(end, start + 1), num_video_frames)
    return start, end


# --------------------------------------------------------------------------------------------
# Files and caches
# --------------------------------------------------------------------------------------------


def _check_file(path: PathLike) -> tuple[str, int, int]:
    """Reject what is not a readable, non-empty regular file. Returns (abs path, size, mtime_ns)."""
    p = os.path.abspath(os.fspath(path))
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise VideoDecodeError(str(path), "file not found") from None
    except OSError as e:
        raise VideoDecodeError(str(path), f"cannot stat file ({e.strerror})") from None
    if os.path.isdir(p):
        raise VideoDecodeError(str(path), "is a directory, not a video file")
    if st.st_size == 0:
        raise VideoDecodeError(str(path), "empty file (0 bytes)")
    if not os.access(p, os.R_OK):
        raise VideoDecodeError(str(path), "file is not readable (permission denied)")
    return p, st.st_size, st.st_mtime_ns


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_backend(backend: str) -> None:
    """Raise ValueError unless ``backend`` is one of :data:`BACKENDS`."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _resolve_backends(backend: str) -> list[str]:
    check_backend(backend)
    if backend != "auto":
        return [backend]
    if _decord_available():
        return ["decord", "pyav"]
    return ["pyav"]


@functools.lru_cache(maxsize=1)
def _decord_available() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        logger.info("decord is not installed; videos are decoded with PyAV")
        return False
    return True


def _clean_decord_message(err: BaseException) -> str:
    # decord errors look like "[12:00:00] /github/workspace/src/video/video_reader.cc:151:
    # Check failed: ... ERROR cannot find video stream with wanted index: -1" plus a C++
    # stack trace; keep the human part of the first line.
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    for marker in ("ERROR ", "Error: ", "Check failed: "):
        if marker in text:
            text = text[text.rindex(marker) + len(marker):]
            break
    return _one_line(text)


def _clear_caches() -> None:
    """Forget every cached probe and PyAV index (for tests and long-running processes)."""
    _probe_cached.cache_clear()
    _pyav_index_cached.cache_clear()


# --------------------------------------------------------------------------------------------
# PyAV backend
# --------------------------------------------------------------------------------------------


class _PyavIndex(NamedTuple):
    """Presentation-ordered packet index of the first video stream (built without decoding)."""

    pts: np.ndarray  # int64 [num_frames], sorted; frame i has timestamp pts[i] (stream time base)
    keyframes: list[int]  # frame indices of keyframe packets, sorted
    width: int
    height: int
    fps: float


def _av_error_reason(err: BaseException) -> str:
    message = getattr(err, "strerror", None) or str(err)
    return _one_line(message)


def _sniff_container(path: str) -> str | None:
    """Name the container a file's first bytes announce (None when unknown)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return None
    if head[4:8] == b"ftyp":
        return "MP4/MOV"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "Matroska/WebM"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI"
    return None


def _open_container(path: str) -> Any:
    av = _import_av()

    try:
        return av.open(path, mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as e:
        detail = _av_error_reason(e) if isinstance(e, av.FFmpegError) else _one_line(str(e))
        kind = _sniff_container(path)
        if kind is not None:
            # The file starts like a video but FFmpeg cannot open it: typically an interrupted
            # download of an MP4 whose index (the 'moov' box) sits at the end.
            raise _BackendError(f"truncated or corrupt {kind} file (ffmpeg: {detail})") from None
        raise _BackendError(f"not a video or unreadable (ffmpeg: {detail})") from None


def _video_stream(container: Any) -> Any:
    streams = list(container.streams.video)
    if not streams:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise _BackendError(f"no video stream (streams: {', '.join(kinds)})")
    return streams[0]


def _declared_duration_seconds(stream: Any) -> float | None:
    """The stream's duration from the header, or from Matroska's per-stream DURATION tag."""
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    tag = (stream.metadata or {}).get("DURATION")
    if tag:
        try:
            hours, minutes, seconds = tag.split(":")
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        except ValueError:
            return None
    return None


def _stream_fps(rates: list[Any], time_base: Any, pts: np.ndarray) -> float:
    for rate in rates:
        if rate is not None and float(rate) > 0:
            return float(rate)
    if len(pts) > 1 and time_base is not None:  # last resort: from the timestamps
        span = float((pts[-1] - pts[0]) * time_base)
        if span > 0:
            return (len(pts) - 1) / span
    raise _BackendError("cannot determine the frame rate")


def _build_pyav_index(path: str) -> _PyavIndex:
    av = _import_av()

    container = _open_container(path)
    try:
        stream = _video_stream(container)
        width, height = int(stream.codec_context.width), int(stream.codec_context.height)
        timestamps: list[int] = []
        keyflags: list[bool] = []
        discarded = 0
        demux_error: str | None = None
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the flush packet at the end
                    continue
                if getattr(packet, "is_discard", False):  # dropped by an edit list: never a frame
                    discarded += 1
                    continue
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is None:
                    ts = timestamps[-1] + 1 if timestamps else 0
                timestamps.append(int(ts))
                keyflags.append(bool(packet.is_keyframe))
        except av.FFmpegError as e:
            demux_error = _av_error_reason(e)
        declared = int(stream.frames or 0)
        declared_seconds = _declared_duration_seconds(stream)
        rates = [stream.average_rate, stream.guessed_rate, stream.base_rate]
        time_base = stream.time_base
    finally:
        container.close()

    num_frames = len(timestamps)
    if num_frames == 0:
        if demux_error is not None:
            raise _BackendError(f"truncated or corrupt: no video packet could be read ({demux_error})")
        raise _BackendError("zero frames: the video stream holds no frames")
    if declared > 0 and num_frames + discarded < declared:
        raise _BackendError(
            f"truncated: the header lists {declared} frames but only {num_frames + discarded} are present"
        )
    if demux_error is not None:
        raise _BackendError(f"truncated or corrupt after {num_frames} frames ({demux_error})")
    if declared == 0 and declared_seconds is not None and time_base is not None:
        # No frame count in the header (Matroska/WebM): compare the declared stream duration
        # with the span of the packets present. One second of slack: durations are rounded and
        # some muxers count the last frame's display time, others do not.
        span = float((max(timestamps) - min(timestamps)) * time_base)
        if declared_seconds - span > 1.0:
            raise _BackendError(
                f"truncated: the header declares {declared_seconds:.2f}s but packets stop at {span:.2f}s"
            )
    if width <= 0 or height <= 0:
        raise _BackendError(f"invalid frame size {width}x{height}")

    order = np.argsort(np.asarray(timestamps, dtype=np.int64), kind="stable")
    pts = np.asarray(timestamps, dtype=np.int64)[order]
    if len(np.unique(pts)) != len(pts):
        # Duplicate timestamps cannot identify frames; positions will come from sequential decoding.
        logger.debug("%s: duplicate packet timestamps; PyAV will decode sequentially", path)
    rank = np.empty_like(order)
    rank[order] = np.arange(num_frames)
    keyframes = sorted(int(rank[i]) for i, key in enumerate(keyflags) if key)
    fps = _stream_fps(rates, time_base, pts)
    return _PyavIndex(pts=pts, keyframes=keyframes or [0], width=width, height=height, fps=fps)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _pyav_index_cached(abs_path: str, size: int, mtime_ns: int) -> _PyavIndex:
    # size and mtime are part of the key so a rewritten file is indexed again.
    return _build_pyav_index(abs_path)


def _pyav_index(path: PathLike) -> _PyavIndex:
    return _pyav_index_cached(*_check_file(path))


def _to_rgb(frame: Any, size: tuple[int, int] | None) -> np.ndarray:
    if size is None:
        return frame.to_ndarray(format="rgb24")
    width, height = size
    # Bicubic, as decord's in-decoder resize (FFmpeg's scale filter default) does.
    return frame.reformat(width=width, height=height, format="rgb24", interpolation="BICUBIC").to_ndarray()


class _NeedSequential(Exception):
    """Timestamps cannot place a decoded frame; decode from the start counting frames instead."""


def _decode_pyav_seeking(
    container: Any, stream: Any, index: _PyavIndex, wanted: list[int], size: tuple[int, int] | None
) -> dict[int, np.ndarray]:
    """Decode the sorted frame indices ``wanted`` by seeking to the keyframe at or before each
    and decoding forward; frames are placed by their presentation timestamp."""
    position = {int(ts): i for i, ts in enumerate(index.pts)}
    if len(position) != len(index.pts):
        raise _NeedSequential()  # duplicate timestamps cannot place frames
    targets = set(wanted)
    out: dict[int, np.ndarray] = {}
    current = -1  # index of the last decoded frame; -1: nothing decoded since the last seek
    frames_iter = None
    for target in wanted:
        key = index.keyframes[max(bisect.bisect_right(index.keyframes, target) - 1, 0)]
        # Seek when a keyframe lies after where the decoder stands: everything before it would
        # be decoded for nothing. Otherwise keep decoding forward.
        if frames_iter is None or key > current:
            if frames_iter is not None or key > 0:
                container.seek(int(index.pts[key]), backward=True, any_frame=False, stream=stream)
            frames_iter = container.decode(stream)
            current = -1
        for frame in frames_iter:
            if frame.pts is None or int(frame.pts) not in position:
                raise _NeedSequential()
            pos = position[int(frame.pts)]
            if current == -1 and pos > target:
                raise _NeedSequential()  # the seek landed after the target
            current = max(current, pos)
            if pos in targets and pos not in out:
                out[pos] = _to_rgb(frame, size)
            if pos >= target:
                break
        if target not in out:
            raise _BackendError(
                f"truncated or corrupt: decoding stopped before frame {target} of {len(index.pts)}"
            )
    return out


def _decode_pyav_sequential(
    container: Any, stream: Any, num_frames: int, wanted: list[int], size: tuple[int, int] | None
) -> dict[int, np.ndarray]:
    container.seek(0, backward=True, any_frame=False, stream=stream)
    targets = set(wanted)
    last = max(wanted)
    out: dict[int, np.ndarray] = {}
    for pos, frame in enumerate(container.decode(stream)):
        if pos in targets:
            out[pos] = _to_rgb(frame, size)
        if pos >= last:
            break
    missing = targets - set(out)
    if missing:
        raise _BackendError(
            f"truncated or corrupt: decoding stopped before frame {min(missing)} of {num_frames}"
        )
    return out


def _read_pyav(
    path: str,
    indices_for: Any,
    max_side: int | None,
    num_threads: int,
) -> tuple[np.ndarray, np.ndarray]:
    av = _import_av()

    index = _pyav_index(path)
    indices, mask = indices_for(len(index.pts), index.fps)
    wanted = sorted(set(int(i) for i in indices))
    size = _bounded_size(index.width, index.height, max_side)
    container = _open_container(path)
    try:
        stream = _video_stream(container)
        if num_threads != 1:
            stream.thread_type = "AUTO"  # frame + slice threads
        stream.codec_context.thread_count = num_threads
        try:
            try:
                got = _decode_pyav_seeking(container, stream, index, wanted, size)
            except _NeedSequential:
                logger.debug("%s: timestamps unusable for seeking; decoding sequentially", path)
                got = _decode_pyav_sequential(container, stream, len(index.pts), wanted, size)
        except av.FFmpegError as e:
            raise _BackendError(f"truncated or corrupt: decoding failed ({_av_error_reason(e)})") from None
    finally:
        container.close()
    frames = np.stack([got[int(i)] for i in indices])
    return frames, mask


# --------------------------------------------------------------------------------------------
# decord backend
# --------------------------------------------------------------------------------------------


def _open_decord(path: str, num_threads: int, size: tuple[int, int] | None = None) -> Any:
    import decord

    kwargs: dict[str, Any] = {"ctx": decord.cpu(0), "num_threads": num_threads}
    if size is not None:
        kwargs["width"], kwargs["height"] = size
    try:
        return decord.VideoReader(path, **kwargs)
    except Exception as e:  # decord raises DECORDError (a bare Exception subclass) and RuntimeError
        raise _BackendError(f"decord cannot open the file ({_clean_decord_message(e)})") from None


def _probe_decord(path: str) -> VideoInfo:
    reader = _open_decord(path, num_threads=1)
    try:
        num_frames = len(reader)
        if num_frames == 0:
            raise _BackendError("zero frames: the video stream holds no frames")
        fps = float(reader.get_avg_fps())
        # decord exposes no frame size without decoding; one frame at the start is cheap.
        first = reader[0].asnumpy()
        keys = [int(k) for k in reader.get_key_indices()]
    except _BackendError:
        raise
    except Exception as e:
        raise _BackendError(f"decord cannot read the file ({_clean_decord_message(e)})") from None
    finally:
        del reader
    if not (fps > 0 and math.isfinite(fps)):
        raise _BackendError(f"invalid frame rate {fps}")
    height, width = int(first.shape[0]), int(first.shape[1])
    return VideoInfo(width, height, num_frames, fps, num_frames / fps, keys, "decord")


def _read_decord(
    path: str,
    indices_for: Any,
    max_side: int | None,
    num_threads: int,
) -> tuple[np.ndarray, np.ndarray]:
    size = None
    if max_side is not None:
        info = probe_video(path, backend="decord")
        size = _bounded_size(info.width, info.height, max_side)
    reader = _open_decord(path, num_threads=num_threads, size=size)
    try:
        num_video_frames = len(reader)
        if num_video_frames == 0:
            raise _BackendError("zero frames: the video stream holds no frames")
        indices, mask = indices_for(num_video_frames, float(reader.get_avg_fps()))
        unique, inverse = np.unique(indices, return_inverse=True)
        try:
            batch = reader.get_batch(unique.tolist()).asnumpy()
        except Exception as e:
            if size is not None:
                # decord 0.6 fails its own buffer-size check for some output widths (8, 12, 16,
                # 24, 48, 72, ... pixels): "DECORDArrayCopyFromTo: The size must exactly match".
                raise _BackendError(
                    f"decord cannot decode frames resized to {size[0]}x{size[1]} ({_clean_decord_message(e)})"
                ) from None
            raise _BackendError(f"decord cannot decode frames ({_clean_decord_message(e)})") from None
    finally:
        del reader
    if batch.ndim != 4 or batch.shape[0] != len(unique) or batch.shape[-1] != 3 or batch.dtype != np.uint8:
        raise _BackendError(f"decord returned an array of shape {batch.shape} and dtype {batch.dtype}")
    return batch[inverse.reshape(-1)], mask  # fancy indexing copies, so padding is real copies


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _bounded_size(width: int, height: int, max_side: int | None) -> tuple[int, int] | None:
    """Output (width, height) keeping aspect with the larger side at most ``max_side``; None
    when no resize is needed."""
    if max_side is None:
        return None
    if max_side <= 0:
        raise ValueError(f"max_side must be positive, got {max_side}")
    longest = max(width, height)
    if longest <= max_side:
        return None
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def _probe_backend(abs_path: str, name: str) -> VideoInfo:
    if name == "decord":
        return _probe_decord(abs_path)
    index = _pyav_index(abs_path)
    n = len(index.pts)
    return VideoInfo(index.width, index.height, n, index.fps, n / index.fps, list(index.keyframes), "pyav")


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _probe_cached(abs_path: str, size: int, mtime_ns: int, backend: str) -> VideoInfo:
    reason = ""
    for name in _resolve_backends(backend):
        try:
            return _probe_backend(abs_path, name)
        except _BackendError as e:
            reason = e.reason  # the last backend's reason is reported (PyAV's are the clearest)
            logger.debug("%s: %s probe failed: %s", abs_path, name, e.reason)
    raise VideoDecodeError(abs_path, reason)


def _disk_cache_path(cache_dir: PathLike, abs_path: str, size: int, mtime_ns: int, backend: str) -> Path:
    key = f"{_PROBE_CACHE_VERSION}|{abs_path}|{size}|{mtime_ns}|{backend}"
    return Path(cache_dir) / f"{hashlib.sha1(key.encode()).hexdigest()}.json"


def probe_video(path: PathLike, backend: Backend = "auto", cache_dir: PathLike | None = None) -> VideoInfo:
    """Size, frame count, frame rate and keyframes of a video, cached.

    Results are cached in-process (LRU) keyed on (absolute path, file size, mtime), so a file that
    is rewritten is probed again. With ``cache_dir``, results are also stored there as small JSON
    files (one per key, written atomically) so later processes skip the probe.

    Raises:
        VideoDecodeError: the file is missing, empty, a directory, not a video, has no video
            stream, no frames, or is truncated.
    """
    abs_path, size, mtime_ns = _check_file(path)
    check_backend(backend)
    disk_path = None
    if cache_dir is not None:
        disk_path = _disk_cache_path(cache_dir, abs_path, size, mtime_ns, backend)
        try:
            info = VideoInfo.from_json(json.loads(disk_path.read_text()))
            return dataclasses.replace(info, keyframe_indices=_copy_list(info.keyframe_indices))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError) as e:
            logger.warning("ignoring unreadable probe cache file %s (%s)", disk_path, e)
    try:
        info = _probe_cached(abs_path, size, mtime_ns, backend)
    except VideoDecodeError as e:
        raise VideoDecodeError(str(path), e.reason) from None
    if disk_path is not None:
        _write_probe_cache(disk_path, info.to_json())
    # The cached record is shared: hand out a copy of its only mutable field.
    return dataclasses.replace(info, keyframe_indices=_copy_list(info.keyframe_indices))


def _copy_list(values: list[int] | None) -> list[int] | None:
    return None if values is None else list(values)


def _write_probe_cache(path: Path, obj: dict[str, Any]) -> None:
    try:
        atomic_write_text(path, json.dumps(obj))
    except OSError as e:
        logger.warning("cannot write probe cache file %s (%s)", path, e)


def read_frames(
    path: PathLike,
    num_frames: int,
    mode: SampleMode = "uniform",
    start_seconds: float | None = None,
    end_seconds: float | None = None,
    backend: Backend = "auto",
    max_side: int | None = None,
    rng: np.random.Generator | None = None,
    num_threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``num_frames`` frames sampled from a video (or a clip of it).

    The clip ``[start_seconds, end_seconds)`` becomes a frame window through
    :func:`seconds_to_frame_window`, and :func:`sample_indices` picks the frames ("uniform":
    segment middles, for evaluation; "random": a random frame per segment, for training).

    Args:
        path: video file.
        num_frames: frames to return (T).
        mode: "uniform" or "random".
        start_seconds, end_seconds: optional clip bounds in seconds.
        backend: "auto" (decord, then PyAV when decord fails), "decord" or "pyav".
        max_side: when the larger side of the video exceeds this, the decoder downscales frames
            (keeping the aspect ratio, bicubic) so the larger side equals it; bounds memory on
            huge videos. None keeps the full resolution.
        rng: numpy Generator used by "random" mode.
        num_threads: decoder threads per call; 1 suits DataLoader workers (one process per
            core), 0 lets the decoder choose.

    Returns:
        ``(frames, mask)``: ``frames`` uint8 ``[T, H, W, 3]`` RGB; ``mask`` bool ``[T]``, False
        for padding slots when the window holds fewer than T frames. Padding slots hold copies
        of the last real frame.

    Raises:
        VideoDecodeError: ``"<path>: <reason>"`` for a missing file, a directory, an empty file,
            a file that is not a video, no video stream, zero frames, or truncated/corrupt data.
    """
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    if mode not in SAMPLE_MODES:
        raise ValueError(f"mode must be one of {SAMPLE_MODES}, got {mode!r}")
    abs_path, _, _ = _check_file(path)
    backends = _resolve_backends(backend)

    def indices_for(num_video_frames: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
        start, end = seconds_to_frame_window(num_video_frames, fps, start_seconds, end_seconds)
        return sample_indices(num_video_frames, num_frames, mode, start, end, rng)

    reason = ""
    for name in backends:
        reader = _read_decord if name == "decord" else _read_pyav
        # A backend that fails may already have drawn from rng; the next one starts from the
        # same state, so a fallback samples the frames the first backend would have.
        rng_state = rng.bit_generator.state if rng is not None else None
        try:
            frames, mask = reader(abs_path, indices_for, max_side, num_threads)
        except (_BackendError, VideoDecodeError) as e:
            reason = e.reason
            if rng is not None:
                rng.bit_generator.state = rng_state
            if name != backends[-1]:
                logger.info("%s: %s failed (%s); falling back to %s", path, name, e.reason, backends[-1])
            continue
        if frames.shape[0] != num_frames or frames.ndim != 4 or frames.shape[-1] != 3:
            raise VideoDecodeError(str(path), f"decoder returned frames of shape {frames.shape}")
        return np.ascontiguousarray(frames), mask
    raise VideoDecodeError(str(path), reason)


# --------------------------------------------------------------------------------------------
# Encoding (tests, benchmarks, the embedded dataset)
# --------------------------------------------------------------------------------------------

# Codecs whose FFmpeg wrappers take -crf; the AV1/VP9 ones need -b:v 0 for constant quality.
_CRF_CODECS = {"libx264": (), "libx265": (), "libaom-av1": ("-b:v", "0"), "libsvtav1": (), "libvpx-vp9": ("-b:v", "0")}
# Fast settings per codec: these files are made by the toolkit, encode time matters more than size.
_SPEED_ARGS = {
    "libx264": ("-preset", "veryfast"),
    "libx265": ("-preset", "ultrafast", "-x265-params", "log-level=error"),
    "libaom-av1": ("-cpu-used", "8", "-row-mt", "1"),
    "libsvtav1": ("-preset", "12", "-svtav1-params", "verbosity=0"),
    "libvpx-vp9": ("-deadline", "realtime", "-cpu-used", "8"),
}


def ffmpeg_executable() -> str:
    """Path of the FFmpeg binary shipped by imageio-ffmpeg (no system ffmpeg needed)."""
    try:
        import imageio_ffmpeg

        executable = imageio_ffmpeg.get_ffmpeg_exe()
        if not (os.path.isfile(executable) and os.access(executable, os.X_OK)):
            raise RuntimeError(f"{executable} is not an executable file")
        return executable
    except (ImportError, RuntimeError) as error:
        raise CalmcapError(
            f"no ffmpeg binary for encoding videos ({_one_line(str(error)) or type(error).__name__}): "
            "pip install imageio-ffmpeg, or point IMAGEIO_FFMPEG_EXE at an ffmpeg executable"
        ) from None


def _import_av():
    """PyAV, or a one-line error saying how to get it."""
    try:
        import av
    except ImportError:
        raise CalmcapError("PyAV is not installed (needed to decode what decord cannot): pip install av") from None
    return av


def encode_video(
    path: PathLike,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float | Fraction | str,
    codec: str = "libx264",
    keyframe_interval: int | None = None,
    crf: int | None = 18,
    pix_fmt: str = "yuv420p",
    threads: int | None = None,
    extra_args: Iterable[str] = (),
) -> Path:
    """Encode RGB frames to a video file with imageio-ffmpeg's FFmpeg binary.

    Frames are piped as raw ``rgb24`` to the FFmpeg process (one frame at a time, so an
    iterable of frames is never held in memory at once) and written to a temporary file in the
    same folder that replaces ``path`` only once FFmpeg succeeded: an interrupted run never
    leaves a half-written video behind.

    Args:
        path: output file; the container follows its extension (.mp4, .mkv, .webm, .avi).
        frames: uint8 ``[N, H, W, 3]`` array, or an iterable of uint8 ``[H, W, 3]`` arrays of one
            size. With ``pix_fmt="yuv420p"`` H and W must be even.
        fps: frame rate (a number, a Fraction, or a string such as "30000/1001").
        codec: FFmpeg encoder name ("libx264", "libx265", "libaom-av1", "libsvtav1",
            "libvpx-vp9", "mpeg4", ...).
        keyframe_interval: frames between keyframes (``-g``); for libx264 also a fixed GOP with
            scene-cut detection off, so keyframes fall exactly every ``keyframe_interval`` frames.
        crf: constant-quality factor for the encoders that take one (0 is lossless for x264);
            ignored (with a debug log) by the others.
        pix_fmt: output pixel format.
        threads: encoder threads (None: FFmpeg's default).
        extra_args: more output options, inserted before the output path.

    Returns:
        The output path.

    Raises:
        ValueError: bad frames. RuntimeError: FFmpeg failed (its last error lines included).
    """
    out_path = Path(path)
    iterator = iter(frames) if not isinstance(frames, np.ndarray) else iter(_check_frame_array(frames))
    try:
        first = next(iterator)
    except StopIteration:
        raise ValueError("encode_video needs at least one frame") from None
    first = _check_frame(first, None)
    height, width = first.shape[:2]
    if pix_fmt in ("yuv420p", "nv12") and (height % 2 or width % 2):
        raise ValueError(f"{pix_fmt} needs an even frame size, got {width}x{height}")

    cmd = [
        ffmpeg_executable(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-framerate", str(fps),
        "-i", "pipe:0", "-an", "-c:v", codec,
    ]
    cmd += list(_SPEED_ARGS.get(codec, ()))
    if crf is not None:
        if codec in _CRF_CODECS:
            cmd += ["-crf", str(crf), *_CRF_CODECS[codec]]
        else:
            logger.debug("codec %s takes no -crf; encoding with its default quality", codec)
    if keyframe_interval is not None:
        if keyframe_interval <= 0:
            raise ValueError(f"keyframe_interval must be positive, got {keyframe_interval}")
        cmd += ["-g", str(keyframe_interval)]
        if codec == "libx264":
            cmd += ["-keyint_min", str(keyframe_interval), "-sc_threshold", "0"]
    if threads is not None:
        cmd += ["-threads", str(threads)]
    cmd += ["-pix_fmt", pix_fmt, *map(str, extra_args)]

    # FFmpeg writes a temporary next to the output (same file system, so the rename is atomic),
    # named with the output's suffix as it picks the container from it. It creates the file
    # itself, so the file gets the usual umask permissions.
    with atomic_path(out_path) as tmp:
        cmd.append(str(tmp))
        # stderr goes to a file, not a pipe: a chatty encoder can then never block on a full pipe
        # while we block writing frames to its stdin.
        with tempfile.TemporaryFile() as stderr_file:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr_file)
            try:
                assert proc.stdin is not None
                count = 0
                try:
                    proc.stdin.write(first.tobytes())
                    count = 1
                    for frame in iterator:
                        proc.stdin.write(_check_frame(frame, (height, width)).tobytes())
                        count += 1
                except BrokenPipeError:
                    pass  # FFmpeg exited early; its message is read below
                finally:
                    try:
                        proc.stdin.close()
                    except BrokenPipeError:
                        pass
                returncode = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            if returncode != 0:
                stderr_file.seek(0)
                message = stderr_file.read().decode(errors="replace").strip().splitlines()
                tail = " | ".join(message[-3:]) if message else f"exit code {returncode}"
                raise RuntimeError(f"ffmpeg failed to encode {out_path} with {codec}: {tail}")
    logger.debug("encoded %d frames (%dx%d, %s fps, %s) to %s", count, width, height, fps, codec, out_path)
    return out_path


def _check_frame_array(frames: np.ndarray) -> np.ndarray:
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [N, H, W, 3], got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    return frames


def _check_frame(frame: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"each frame must be uint8 [H, W, 3], got {frame.dtype} {frame.shape}")
    if size is not None and frame.shape[:2] != size:
        raise ValueError(f"frame size changed from {size} to {frame.shape[:2]}")
    return np.ascontiguousarray(frame)
