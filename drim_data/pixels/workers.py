"""Map a function over items in worker processes, results in input order, with few items in flight at a time.

Results come back in order so the single database writer records them the same way whatever the worker count,
and inputs are pulled lazily so only a handful of images are in memory at once.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int, preload: str) -> Iterator[Any]:
    """`fn(item)` for each item, in order; in this process when `workers` < 2.

    Workers are forked from a clean server process that has imported `preload` (not from this process, whose
    database and library threads a fork would copy mid-flight). As with any spawned worker, each imports the main
    module of the program (not `python -m drim_data`'s), so a script should keep that light and guarded.
    """
    if workers < 2:
        yield from map(fn, items)
        return
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([preload])
    else:  # Windows
        context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_setup)
    yield from _windowed(pool, fn, items, workers)


def threaded_map(fn: Callable[[Any], Any], items: Iterable[Any], threads: int) -> Iterator[Any]:
    """`fn(item)` for each item, in order, on `threads` threads: for work that releases the GIL (reading files,
    hashing, decoding), a few items in flight at a time."""
    yield from _windowed(ThreadPoolExecutor(threads), fn, items, threads)


def _windowed(pool: Executor, fn: Callable[[Any], Any], items: Iterable[Any], width: int) -> Iterator[Any]:
    """Results in input order, at most 2 x `width` items submitted ahead; the pool is shut down when done."""
    try:
        in_flight: deque = deque()
        for item in items:
            in_flight.append(pool.submit(fn, item))
            if len(in_flight) >= 2 * width:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()
    except BaseException:  # an interrupt, a fault or an abandoned generator: drop queued work, not finish it first
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def one_core() -> None:
    """Keep OpenCV to one thread, in a process that is one of several sharing the machine's cores."""
    import cv2

    cv2.setNumThreads(1)


def _worker_setup() -> None:
    one_core()  # the processes already use every core
    # Ctrl-C reaches the whole process group: the parent alone decides what it means, and the workers finish
    # their current item instead of each printing a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
