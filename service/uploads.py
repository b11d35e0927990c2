"""The upload rate rule: a request body must keep arriving, or the connection is cut with 408.

Why: the guard reads the whole body of /refine and /segment before it gives the request a
slot (``BPR_MAX_QUEUE``), so a client that trickles its upload holds no slot; this rule makes
sure it does not hold an upload either: after ``BPR_UPLOAD_GRACE_S`` seconds the body must
have come at ``BPR_MIN_UPLOAD_BYTES_PER_S`` on average, and all of it within
``BPR_UPLOAD_TIMEOUT_S``. A one-byte-a-second client is cut off after the grace period.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive

from service.errors import upload_too_large
from service.settings import Settings


class UploadTooSlow(Exception):
    """The body did not arrive at the minimum rate, or not within the upload deadline."""


@dataclass(frozen=True)
class UploadRule:
    """After ``grace_s``, at least ``min_rate`` bytes a second on average since the request
    began, and the whole body within ``timeout_s``."""

    min_rate: float
    grace_s: float
    timeout_s: float

    @classmethod
    def of(cls, settings: Settings) -> UploadRule:
        return cls(settings.min_upload_bytes_per_s, settings.upload_grace_s, settings.upload_timeout_s)

    def deadline(self, start: float, received: int) -> float:
        """The monotonic time by which more of the body must have arrived."""
        return min(start + self.grace_s + received / self.min_rate, start + self.timeout_s)

    def message(self, received: int, seconds: float) -> str:
        return (
            f"request body too slow: {received} bytes in {seconds:.1f} s; a body must arrive at "
            f"{self.min_rate:g} bytes/s or more after the first {self.grace_s:g} s "
            f"(BPR_MIN_UPLOAD_BYTES_PER_S, BPR_UPLOAD_GRACE_S) and within {self.timeout_s:g} s (BPR_UPLOAD_TIMEOUT_S)"
        )


async def read_body(receive: Receive, limit: int, rule: UploadRule) -> deque[Message] | None:
    """The whole request body as its ASGI messages; None if the client disconnected.

    Raises UploadTooSlow (-> 408) under ``rule`` and a 413 HTTPException past ``limit`` bytes.
    Each ``receive`` waits only until the rule's deadline for the bytes so far."""
    start = time.monotonic()
    received, messages = 0, deque[Message]()
    while True:
        remaining = rule.deadline(start, received) - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            message = await asyncio.wait_for(receive(), remaining)
        except TimeoutError:
            raise UploadTooSlow(rule.message(received, time.monotonic() - start)) from None
        if message["type"] == "http.disconnect":
            return None
        received += len(message.get("body", b""))
        if received > limit:
            raise StarletteHTTPException(413, upload_too_large(limit))
        messages.append(message)
        if not message.get("more_body", False):
            return messages


def replay(messages: deque[Message], receive: Receive) -> Receive:
    """``receive`` that hands back the buffered body, then the real channel (for disconnects).

    Pops from ``messages`` itself: each chunk is released once the form parser has it, so the
    buffered body does not stay in memory beside its parsed copy."""

    async def wrapped() -> Message:
        if messages:
            return messages.popleft()
        return await receive()

    return wrapped
