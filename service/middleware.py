"""Two ASGI middlewares that must act before a route reads the body.

* :class:`MetricsMiddleware` (outermost): counts every answer by route and status and times
  it, including the 401/413/429 the guard sends and 500s.
* :class:`GuardMiddleware`: the request-body limit (413 from Content-Length at once, or as
  soon as a streamed body passes it), then for POST /refine and /segment the API key (401)
  and admission: at most ``max_queue`` such requests in flight, else 429 with Retry-After.
  Doing this before the body is read is the point: a rejected caller costs no upload,
  no decoding and no memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response, upload_too_large
from service.metrics import ServiceMetrics
from service.security import UNAUTHORIZED, api_key_ok
from service.state import ServiceState

HEAVY_ROUTES = frozenset({"/refine", "/segment"})


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, routes: Callable[[], frozenset[str]]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500  # what the client sees if the app raises before answering

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope["path"]
            route = path if path in self.routes() else "other"  # bounded label values
            self.metrics.requests.inc(route, str(status))
            self.metrics.latency.observe(time.perf_counter() - start, route)


class GuardMiddleware:
    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        settings = self.state.settings
        headers = Headers(scope=scope)
        heavy = scope["path"] in HEAVY_ROUTES and scope["method"] == "POST"
        # who is asking is decided before anything about the request: a stranger learns
        # nothing about the limits, and costs us no body read
        if heavy and not api_key_ok(settings, headers.get("x-api-key")):
            self.state.metrics.rejected.inc("unauthorized")
            response = error_response(401, "unauthorized", UNAUTHORIZED, {"WWW-Authenticate": "ApiKey"})
            return await response(scope, receive, send)
        limit = settings.max_upload_bytes
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            self.state.metrics.rejected.inc("upload_too_large")
            return await error_response(413, "upload_too_large", upload_too_large(limit))(scope, receive, send)
        receive = _limited(receive, limit)
        if not heavy:
            return await self.app(scope, receive, send)
        if self.state.in_flight >= settings.max_queue:
            self.state.metrics.rejected.inc("queue_full")
            engine = self.state.engine
            retry = str(engine.batcher.retry_after() if engine else 1)
            detail = f"busy: {self.state.in_flight} requests in flight (BPR_MAX_QUEUE={settings.max_queue}); retry in {retry} s"
            return await error_response(429, "queue_full", detail, {"Retry-After": retry})(scope, receive, send)
        self.state.in_flight += 1
        self.state.metrics.admitted.set(self.state.in_flight)
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.in_flight -= 1
            self.state.metrics.admitted.set(self.state.in_flight)


def _limited(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises 413 once the body read so far passes ``limit`` bytes.

    Raised inside the route's form parsing, it reaches the app's exception handlers
    (which answer the JSON 413) like any HTTPException.
    """
    total = 0

    async def wrapped() -> Message:
        nonlocal total
        message = await receive()
        if message["type"] == "http.request":
            total += len(message.get("body", b""))
            if total > limit:
                raise StarletteHTTPException(413, upload_too_large(limit))
        return message

    return wrapped
