"""The deadline of one /refine or /segment request (BPR_REQUEST_TIMEOUT_S), and the client's
hang-up, which stops the work the same way.

Why the work is stopped rather than left to finish: an answer nobody will read still holds
patches in the shared network queue, and every other request waits behind them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from service.errors import ServiceError
from service.metrics import ServiceMetrics

T = TypeVar("T")


class RequestDeadline:
    """Runs the steps of one request under what is left of ``seconds``; once the body is read,
    also until the client disconnects.

        async with RequestDeadline(request, settings.request_timeout_s, metrics) as deadline:
            parts = await deadline.read(read_form(request, limits, fields))
            answer = await deadline.run(pipeline.refine(...))

    A step past the deadline is cancelled and the answer is 503 ``timeout``; a step whose client
    has gone is cancelled and the answer is 499 ``client_closed``. Cancelling unwinds the step
    at its next await: its queued patches leave the network queue and its remaining stages
    are skipped (the CPU step under way, at most one extraction or reassembly, runs to its
    end). Both count in ``bpr_cancelled_total``.
    """

    def __init__(self, request: Request, seconds: float, metrics: ServiceMetrics, poll_s: float = 0.2) -> None:
        self.request = request
        self.seconds = seconds
        self.metrics = metrics
        self.poll_s = poll_s
        self._ends = time.monotonic() + seconds
        self._client_gone: asyncio.Task[bool] | None = None  # started once the body is read

    async def __aenter__(self) -> RequestDeadline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client_gone is not None:
            self._client_gone.cancel()

    async def read(self, body: Awaitable[T]) -> T:
        """Run the step that reads the request body, then start watching the connection.

        Not before: a watch reads one ASGI message, which must not be a body chunk."""
        value = await self.run(body)
        self._client_gone = asyncio.ensure_future(self._watch())
        return value

    async def run(self, step: Awaitable[T]) -> T:
        """``step``'s value; ServiceError 503 past the deadline, 499 once the client has left."""
        task = asyncio.ensure_future(step)
        waiting: set[asyncio.Future] = {task} if self._client_gone is None else {task, self._client_gone}
        remaining = max(0.0, self._ends - time.monotonic())
        try:
            done, _ = await asyncio.wait(waiting, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task  # unwinds at its next await: the batcher drops the queued patches
        gone = self._client_gone
        if gone is not None and gone in done and not gone.cancelled() and gone.result():
            self.metrics.cancelled.inc("disconnect")
            raise ServiceError(499, "client_closed", "the client closed the connection before the answer")
        self.metrics.cancelled.inc("timeout")
        raise ServiceError(
            503,
            "timeout",
            f"the request took longer than {self.seconds:g} s (BPR_REQUEST_TIMEOUT_S)",
            {"Retry-After": "1"},
        )

    async def _watch(self) -> bool:
        """True once the client has disconnected."""
        while not await self.request.is_disconnected():
            await asyncio.sleep(self.poll_s)
        return True
