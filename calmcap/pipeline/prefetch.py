"""Decoding videos ahead of the model: :func:`decode_clip`, :class:`ClipPrefetcher`, :func:`clip_batches`.

Decoding overlaps the model (issue #5): a background thread decodes and preprocesses the next
videos while the model encodes and captions the current batch. decord and PyAV release the
GIL while they decode and torch releases it in its kernels, so both cores stay busy.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from calmcap.constants import MAX_FRAME_SIDE
from calmcap.errors import VideoDecodeError
from calmcap.pipeline.stats import PipelineStats

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class DecodedClip:
    """One preprocessed video: ``video`` float [T, 3, S, S], ``mask`` bool [T]; or an ``error``."""

    index: int
    path: str
    video: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    error: str | None = None
    seconds: float = 0.0


def decode_clip(
    path: PathLike,
    num_frames: int,
    image_size: int,
    *,
    index: int = 0,
    max_side: int | None = MAX_FRAME_SIDE,
    backend: str = "auto",
) -> DecodedClip:
    """Decode ``num_frames`` uniformly sampled frames (segment middles) and apply CLIP preprocessing.

    The same steps as an evaluation dataset item (``read_frames`` + ``clip_transform``), so a
    caption here equals the one ``calmcap evaluate`` produces. Never raises for a bad video:
    the reason is in ``error`` (``"<path>: <reason>"`` messages lose the path prefix).
    """
    start = time.perf_counter()
    clip = DecodedClip(index=index, path=str(path))
    try:
        from calmcap.data.video import read_frames

        frames, mask = read_frames(path, num_frames, mode="uniform", max_side=max_side, backend=backend)  # type: ignore[arg-type]
        import torch

        from calmcap.data.transforms import clip_transform

        clip.video = clip_transform(frames, image_size)
        clip.mask = torch.from_numpy(mask)
    except VideoDecodeError as error:
        clip.error = error.reason
    except Exception as error:  # noqa: BLE001 - one odd file must not stop a batch of thousands
        logger.debug("decoding %s failed", path, exc_info=True)
        clip.error = f"{type(error).__name__}: {error}".splitlines()[0]
    clip.seconds = time.perf_counter() - start
    return clip


class ClipPrefetcher:
    """Iterate :class:`DecodedClip` in input order, decoding ahead in a background thread.

    With ``overlap=False`` each clip is decoded when asked for (the sequential baseline).
    ``depth`` bounds how many decoded clips wait in memory (each ~7 MB at 12 x 224 px).
    Use as a context manager or call :meth:`close` to stop the thread early.
    """

    _DONE = object()

    def __init__(
        self,
        paths: Sequence[PathLike],
        num_frames: int,
        image_size: int,
        *,
        overlap: bool = True,
        depth: int = 8,
        max_side: int | None = MAX_FRAME_SIDE,
        backend: str = "auto",
        stats: PipelineStats | None = None,
    ) -> None:
        self.paths = [str(p) for p in paths]
        self.num_frames = num_frames
        self.image_size = image_size
        self.overlap = overlap
        self.max_side = max_side
        self.backend = backend
        self.stats = stats
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if overlap and self.paths:
            self._thread = threading.Thread(target=self._work, name="calmcap-decode", daemon=True)
            self._thread.start()

    def _decode(self, index: int) -> DecodedClip:
        clip = decode_clip(self.paths[index], self.num_frames, self.image_size, index=index,
                           max_side=self.max_side, backend=self.backend)
        if self.stats is not None:
            self.stats.decode_seconds += clip.seconds
        return clip

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for index in range(len(self.paths)):
                if self._stop.is_set() or not self._put(self._decode(index)):
                    return
        except BaseException as error:  # noqa: BLE001 - re-raised in the consumer
            self._put(error)
            return
        self._put(self._DONE)

    def __iter__(self) -> Iterator[DecodedClip]:
        if self._thread is None:
            for index in range(len(self.paths)):
                if self._stop.is_set():
                    return
                clip = self._decode(index)
                if self.stats is not None:
                    self.stats.decode_wait_seconds += clip.seconds
                yield clip
            return
        while True:
            start = time.perf_counter()
            item = self._queue.get()
            if self.stats is not None:
                self.stats.decode_wait_seconds += time.perf_counter() - start
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop the decoding thread (it finishes the clip it is decoding)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def __enter__(self) -> ClipPrefetcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def clip_batches(clips: Iterable[DecodedClip], batch_size: int) -> Iterator[list[DecodedClip]]:
    """Group clips in order; bad clips ride along with the decodable ones.

    The first groups hold 1, 2, 4, ... decodable clips up to ``batch_size``: the model starts
    on the first video as soon as it is decoded instead of waiting for a whole batch, and the
    decode thread stays ahead from then on. The schedule depends only on the inputs, so the
    captions are the same with and without overlap.
    """
    pending: list[DecodedClip] = []
    good, size = 0, 1
    for clip in clips:
        pending.append(clip)
        if clip.error is None:
            good += 1
        if good >= min(size, batch_size):
            yield pending
            pending, good, size = [], 0, size * 2
    if pending:
        yield pending
