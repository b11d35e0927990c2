"""Dynamic batching: patches of concurrent requests share network forward passes.

One thread, the network worker, owns the feed (a :class:`bpr.feed.PatchFeed`, whose
``take`` cuts each batch) and is the only caller of :meth:`bpr.Refiner.run_batch`.
Requests hand in prepared jobs through a locked inbox and get a
``concurrent.futures.Future`` that resolves once the last patch of their job has been run.

Policy: a batch runs as soon as ``batch_size`` patches are waiting; a partly filled batch
waits at most ``max_wait_s`` after its oldest patch arrived, so a lone small request pays
at most that much extra latency while many small requests fill the batch together.

Backpressure: at most ``max_queued_patches`` patches wait at once. A job that would go over
is refused with :class:`QueueFull` (the HTTP layer answers 429), except when the queue is
empty, so one large request is never refused forever. Cancelled futures (timed-out
requests) are dropped from the feed before the next batch, so nobody computes for them.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

from bpr.feed import PatchFeed
from bpr.refiner import Job, Refiner

log = logging.getLogger("bpr.service")

# (patches in the batch, distinct jobs in it, seconds the forward pass took)
BatchObserver = Callable[[int, int, float], None]


class QueueFull(Exception):
    """The patch queue is full; ``retry_after`` is a guess in whole seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the refinement queue is full; retry in about {retry_after} s")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The batcher stopped taking work (the server is shutting down)."""


@dataclass
class _Ticket:
    job: Job
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    """The network worker thread and its bounded patch queue."""

    def __init__(
        self,
        refiner: Refiner,
        max_wait_s: float,
        max_queued_patches: int,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self.refiner = refiner
        self.max_wait_s = max_wait_s
        self.max_queued_patches = max_queued_patches
        self.on_batch = on_batch
        self._cond = threading.Condition()
        self._inbox: list[_Ticket] = []
        self._pending_patches = 0  # submitted and not yet run (inbox + feed)
        self._pending_jobs = 0
        self._stopping = False
        self._cancelled = False  # some queued future was cancelled since the worker last looked
        self._patches_per_s = 0.0  # moving average, for Retry-After
        self._thread = threading.Thread(target=self._run, name="bpr-network", daemon=True)

    # ------------------------------------------------------------------ client side
    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    @property
    def pending_patches(self) -> int:
        return self._pending_patches

    @property
    def pending_jobs(self) -> int:
        return self._pending_jobs

    def retry_after(self, extra_patches: int = 0) -> int:
        """Seconds until the queue has drained, from the recent network speed; 1..60."""
        rate = self._patches_per_s or 100.0
        return int(min(60, max(1, math.ceil((self._pending_patches + extra_patches) / rate))))

    def submit(self, job: Job) -> Future:
        """Queue a prepared job; the future resolves to the same job once all its patches ran."""
        ticket = _Ticket(job)
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            if self._pending_patches and self._pending_patches + job.remaining > self.max_queued_patches:
                raise QueueFull(self.retry_after(job.remaining))
            self._inbox.append(ticket)
            self._pending_patches += job.remaining
            self._pending_jobs += 1
            self._cond.notify()
        ticket.future.add_done_callback(self._on_done)
        return ticket.future

    def _on_done(self, future: Future) -> None:
        """A cancelled request wakes the worker, so its patches leave the queue at once."""
        if future.cancelled():
            with self._cond:
                self._cancelled = True
                self._cond.notify()

    def stop(self, timeout: float | None = None) -> bool:
        """Refuse new jobs, finish the queued ones, end the thread; False if it did not end in time."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    # ------------------------------------------------------------------ worker side
    def _run(self) -> None:
        feed = PatchFeed(self.refiner.batch_size)
        tickets: deque[_Ticket] = deque()  # jobs in the feed, oldest first (they finish in this order)
        while True:
            with self._cond:
                while True:
                    for t in self._inbox:
                        feed.add(t.job)
                        tickets.append(t)
                    self._inbox.clear()
                    if self._cancelled or self._ripe(tickets, feed):
                        break
                    if not feed and self._stopping:
                        return
                    # sleep until new work, a cancellation, or the oldest patch's deadline
                    self._cond.wait(tickets[0].enqueued + self.max_wait_s - time.monotonic() if feed else None)
            if self._cancelled:
                with self._cond:
                    self._cancelled = False
                tickets = self._drop_cancelled(feed, tickets)
                if not self._ripe(tickets, feed):
                    continue  # back to waiting: what is left is not due yet
            batch = feed.take()
            t0 = time.perf_counter()
            try:
                self.refiner.run_batch(batch)
            except Exception as exc:  # e.g. CUDA out of memory: fail these requests, keep serving
                log.exception("network batch failed")
                self._fail_all(tickets, exc)
                feed.clear()
                tickets.clear()
                continue
            seconds = time.perf_counter() - t0
            speed = batch.size / max(seconds, 1e-6)
            self._patches_per_s = 0.8 * self._patches_per_s + 0.2 * speed if self._patches_per_s else speed
            done = 0
            while tickets and tickets[0].job.remaining == 0:
                _resolve(tickets.popleft())
                done += 1
            with self._cond:
                self._pending_patches -= batch.size
                self._pending_jobs -= done
            if self.on_batch is not None:
                self.on_batch(batch.size, batch.num_jobs, seconds)

    def _ripe(self, tickets: deque[_Ticket], feed: PatchFeed) -> bool:
        """Is a batch due: full, or its oldest patch waited max_wait, or draining for shutdown?"""
        if not feed:
            return False
        return (
            feed.queued >= feed.batch_size
            or self._stopping
            or time.monotonic() >= tickets[0].enqueued + self.max_wait_s
        )

    def _drop_cancelled(self, feed: PatchFeed, tickets: deque[_Ticket]) -> deque[_Ticket]:
        """Remove jobs whose requests gave up (timeout): their patches never reach the network."""
        gone = {id(t): t for t in tickets if t.future.cancelled()}
        dropped = feed.discard(t.job for t in gone.values())
        with self._cond:
            self._pending_patches -= dropped
            self._pending_jobs -= len(gone)
        return deque(t for t in tickets if id(t) not in gone)

    def _fail_all(self, tickets: deque[_Ticket], exc: Exception) -> None:
        with self._cond:
            for t in tickets:
                self._pending_patches -= t.job.remaining
                self._pending_jobs -= 1
                try:
                    t.future.set_exception(exc)
                except InvalidStateError:  # cancelled meanwhile
                    pass


def _resolve(ticket: _Ticket) -> None:
    try:
        ticket.future.set_result(ticket.job)
    except InvalidStateError:  # the request was cancelled while its last batch ran
        pass
