"""A crash-isolating worker pool for passes over many videos: :func:`run_tasks`, and their progress bar.

Worker processes are started with ``spawn`` (the caller may hold torch threads or open decoders
that a fork would copy) and each one decodes with one thread (one process per core). A worker
that dies (a decoder crash on a corrupt file) does not end the pass: the tasks it had in hand
are retried one at a time in a fresh process, and the one that kills it again is reported as
crashed.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

logger = logging.getLogger(__name__)

# Tasks queued per worker process: keeps workers busy without holding the whole manifest in
# flight (a crash then only puts this many videos under suspicion).
_TASKS_PER_WORKER = 4


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "video") -> Any:
    """A tqdm bar on stderr (count, rate, ETA), or a silent one when not ``enabled``."""
    from tqdm import tqdm  # local: keeps importing this module cheap

    # tqdm's default bar shows count, rate and ETA; smoothing=0.1 steadies the ETA.
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                smoothing=0.1)


def init_worker() -> None:
    """Each worker process uses one thread everywhere: one process per core is the parallelism."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def init_torch_worker() -> None:
    """:func:`init_worker`, and torch imported up front with one thread."""
    init_worker()
    import torch

    torch.set_num_threads(1)


def run_tasks(
    fn: Callable[[Any], dict[str, Any]],
    tasks: Iterable[Any],
    workers: int,
    on_result: Callable[[Any, dict[str, Any]], None],
    on_crash: Callable[[Any, str], dict[str, Any]],
    initializer: Callable[[], None] = init_worker,
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
