"""The model's thread: a bounded queue of requests and the micro-batches it runs (:class:`ModelBatcher`).

One model copy serves every request, and one thread owns it: torch releases the GIL in its
kernels, so a single thread keeps the cores busy, and nothing else touches the model (the
caption path changes torch's thread count around beam search, a process-wide setting).
Request handlers only wait on futures.

Captions are batched: the thread takes the oldest waiting caption and every other waiting one
with the same decoding settings and frame count, up to ``max_batch_size``, and runs them as one
batch through the same function ``calmcap caption`` uses per batch. Under load the queue fills
while a batch runs and the next batch is larger; a lone request runs alone without waiting
(unless ``batch_wait_seconds`` asks for company). Sampled captions run alone, seeded with their
``seed`` right before, so they equal ``calmcap caption --sample --seed S`` on that file.
Explanations and searches run alone, in arrival order with the captions.

**Batching and beams.** A caption in a batch of B goes through the same operations as alone,
but matrix products over B rows may round differently from those over one row (the kernel
blocks differently), in the last bits of a float32. Beam search compares sums of log
probabilities, so two beams whose scores are that close (float32 rounding of a sum of ~20 log
probabilities: about 1e-6) can swap; a caption then differs from ``calmcap caption``'s only where
the CLI's own top two beams are that close. The tests allow a swap only where the CLI's beams are
within 1e-4, and a score within 1e-4 otherwise; 1,440 batched captions of tests/test_serve_load.py
had no swap. ``max_batch_size=1`` gives bit-identical results.

The queue is bounded by admission, not by the batch: a request takes a slot before its body is
read (:meth:`ModelBatcher.admit`) and gives it back when answered, so at most ``queue_size``
requests are uploading, decoding or waiting at once, and one more is refused at once with a
``Retry-After`` estimate, before it costs anything.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from calmcap.pipeline.stats import PipelineStats

if TYPE_CHECKING:  # pragma: no cover
    from calmcap.config import DecodeOptions
    from calmcap.pipeline import CaptionResult, DecodedClip, LoadedModel

logger = logging.getLogger(__name__)

T = TypeVar("T")


class QueueFull(Exception):
    """Every slot is taken; ``retry_after_seconds`` estimates when one frees up."""

    def __init__(self, capacity: int, retry_after_seconds: int) -> None:
        super().__init__(f"the server is busy ({capacity} requests in progress); retry in {retry_after_seconds} s")
        self.retry_after_seconds = retry_after_seconds


@dataclass
class CaptionOutcome:
    """A caption with how it was made: the ``batch_size`` it ran in, the seconds it waited for the
    model (``queue_seconds``) and its batch's image tower and beam search took."""

    result: CaptionResult
    batch_size: int
    queue_seconds: float
    tower_seconds: float
    decoder_seconds: float


@dataclass(eq=False)  # identity: the queue removes jobs by identity, and clips hold tensors
class _CaptionJob:
    clip: DecodedClip
    decode: DecodeOptions
    seed: int | None
    future: Future
    queued: float = field(default_factory=time.perf_counter)

    def joins(self, other: _CaptionJob) -> bool:
        """Whether this job can run in one batch with ``other`` (same settings, same clip shape, no sampling)."""
        return (self.seed is None and other.seed is None and self.decode == other.decode
                and self.clip.video.shape == other.clip.video.shape)  # type: ignore[union-attr]


@dataclass(eq=False)
class _CallJob:
    fn: Callable[[LoadedModel], Any]
    future: Future
    queued: float = field(default_factory=time.perf_counter)


class _Slot:
    """A request's place in the queue; leaving the ``with`` block frees it (once)."""

    def __init__(self, batcher: ModelBatcher) -> None:
        self._batcher: ModelBatcher | None = batcher

    def __enter__(self) -> _Slot:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._batcher is not None:
            self._batcher._release()
            self._batcher = None


class ModelBatcher:
    """Runs every model call of a server on one thread; captions in micro-batches (module docstring).

    ``start`` it, ``admit`` each request (a slot for its lifetime), then submit its work with
    :meth:`caption` or :meth:`call` and wait on the returned future; ``close`` at exit.
    """

    def __init__(self, loaded: LoadedModel, *, queue_size: int, max_batch_size: int,
                 batch_wait_seconds: float = 0.0) -> None:
        self.loaded = loaded
        self.queue_size = queue_size
        self.max_batch_size = max_batch_size
        self.batch_wait_seconds = batch_wait_seconds
        self.stats = PipelineStats()
        self.batches = 0
        self._admitted = 0
        self._jobs: collections.deque[_CaptionJob | _CallJob] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        # Seconds per model run, smoothed: what Retry-After is estimated from.
        self._run_seconds = 0.5

    # ---------------------------------------------------------------- admission

    def admit(self) -> _Slot:
        """Take one of the ``queue_size`` slots (now: :class:`QueueFull` when none is free); the returned
        context manager gives it back at the end of its block."""
        with self._cond:
            if self._admitted >= self.queue_size:
                raise QueueFull(self.queue_size, self.retry_after_seconds())
            self._admitted += 1
        return _Slot(self)

    def _release(self) -> None:
        with self._cond:
            self._admitted -= 1

    def retry_after_seconds(self) -> int:
        """When a slot is likely free: the waiting work in model runs of ``max_batch_size``, at least 1 s."""
        runs = len(self._jobs) / self.max_batch_size + 1
        return max(1, math.ceil(runs * self._run_seconds))

    def snapshot(self) -> dict[str, Any]:
        """The queue now and the work done so far (for ``/v1/health``)."""
        with self._cond:
            return {"capacity": self.queue_size, "admitted": self._admitted, "waiting_for_model": len(self._jobs),
                    "max_batch_size": self.max_batch_size, "batches": self.batches, "captions": self.stats.videos}

    # ---------------------------------------------------------------- submitting work

    def caption(self, clip: DecodedClip, decode: DecodeOptions, seed: int | None = None) -> Future[CaptionOutcome]:
        """Caption a decoded clip (``clip.video`` [T, 3, S, S]) with complete settings ``decode``.

        ``seed`` (sampling only) runs it alone after ``torch.manual_seed(seed)``.
        """
        if clip.video is None:
            raise ValueError(f"{clip.path}: the clip was not decoded ({clip.error})")
        return self._submit(_CaptionJob(clip, decode, seed if decode.do_sample else None, Future()))

    def call(self, fn: Callable[[LoadedModel], T]) -> Future[T]:
        """Run ``fn(loaded_model)`` on the model's thread, alone."""
        return self._submit(_CallJob(fn, Future()))

    def _submit(self, job: _CaptionJob | _CallJob) -> Future:
        with self._cond:
            if self._closing:
                raise RuntimeError("the model thread is closed")
            self._jobs.append(job)
            self._cond.notify()
        return job.future

    # ---------------------------------------------------------------- the thread

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="calmcap-model", daemon=True)
        self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Finish what is queued, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _take(self) -> list[_CaptionJob] | _CallJob | None:
        """The next work: a call, or a batch of captions that can run together; None when closed and empty."""
        with self._cond:
            while True:
                while not self._jobs and not self._closing:
                    self._cond.wait()
                if not self._jobs:
                    return None
                first = self._jobs.popleft()
                # A request that timed out before its turn cancelled its future: skip it.
                if first.future.set_running_or_notify_cancel():
                    break
            if isinstance(first, _CallJob):
                return first
            batch = [first]
            if first.seed is not None:
                return batch
            wait_until = time.perf_counter() + self.batch_wait_seconds
            while len(batch) < self.max_batch_size:
                for job in list(self._jobs):
                    if len(batch) >= self.max_batch_size:
                        break
                    if isinstance(job, _CaptionJob) and job.joins(first):
                        self._jobs.remove(job)
                        if job.future.set_running_or_notify_cancel():
                            batch.append(job)
                left = wait_until - time.perf_counter()
                if len(batch) >= self.max_batch_size or left <= 0 or self._closing:
                    break
                self._cond.wait(left)
            return batch

    def _work(self) -> None:
        while True:
            work = self._take()
            if work is None:
                return
            start = time.perf_counter()
            if isinstance(work, _CallJob):
                self._run_call(work)
            else:
                self._run_captions(work)
            self._run_seconds = 0.8 * self._run_seconds + 0.2 * (time.perf_counter() - start)

    def _run_call(self, job: _CallJob) -> None:
        try:
            job.future.set_result(job.fn(self.loaded))
        except BaseException as error:  # noqa: BLE001 - handed to the request that asked
            job.future.set_exception(error)

    def _run_captions(self, batch: list[_CaptionJob]) -> None:
        # The per-batch step of `calmcap caption` itself (calmcap.pipeline.caption), so a caption
        # here is the CLI's; see the module docstring for what batching may change.
        from calmcap.pipeline.caption import caption_clips

        started = time.perf_counter()
        stats = PipelineStats()
        try:
            if batch[0].seed is not None:
                import torch

                torch.manual_seed(batch[0].seed)
            results = caption_clips(self.loaded.model, [job.clip for job in batch], batch[0].decode, stats)
        except BaseException as error:  # noqa: BLE001 - every request of the batch gets the error
            logger.exception("captioning a batch of %d failed", len(batch))
            for job in batch:
                job.future.set_exception(error)
            return
        self.batches += 1
        self.stats.videos += len(batch)
        self.stats.tower_seconds += stats.tower_seconds
        self.stats.decoder_seconds += stats.decoder_seconds
        for job, result in zip(batch, results, strict=True):
            job.future.set_result(CaptionOutcome(
                result=result, batch_size=len(batch), queue_seconds=started - job.queued,
                tower_seconds=stats.tower_seconds, decoder_seconds=stats.decoder_seconds))
