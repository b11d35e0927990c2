"""Overlap the stages of a whole-dataset run: decoding ahead of the network, encoding behind it.

The network (OpenVINO, ONNX Runtime, torch) releases the GIL while it computes, so a thread
that reads and decodes the next images, and one that RLE-encodes the finished ones, run while
it works instead of before and after it. Both are bounded: at most ``depth`` decoded images
wait for the network, and at most ``depth`` finished images wait for their encoder.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")
_DONE = object()


def prefetch(items: Iterable[T], depth: int = 2) -> Generator[T, None, None]:
    """``items``, produced by a background thread up to ``depth`` ahead of the consumer.

    An exception raised by ``items`` is raised here, at the position it happened; a consumer
    that stops early stops the producer at its next item.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(value: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put((None, exc))
            return
        put((_DONE, None))

    worker = threading.Thread(target=produce, name="bpr-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)


def map_behind(function: Callable[[T], R], items: Iterable[T], depth: int = 2) -> Iterator[R]:
    """``function(item)`` for every item, in order, computed on a worker thread while the
    next items are produced; at most ``depth`` items wait, so memory stays bounded."""
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bpr-encode") as pool:
        for item in items:
            pending.append(pool.submit(function, item))
            while len(pending) > depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
