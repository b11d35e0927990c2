"""Two ASGI middlewares that must act before a route reads the body.

* :class:`MetricsMiddleware` (outermost): counts every answer by route and status and times
  it, including the 401/408/413/429 the guard sends and 500s.
* :class:`GuardMiddleware`: the request-body limit (413 from Content-Length at once, or as
  soon as a streamed body passes it), then for POST /refine and /segment the API key (401),
  a first admission check (429 when ``max_queue`` requests are in flight, before any body is
  read: a rejected caller costs no upload), then the body itself under the upload rate rule
  (service/uploads.py, 408 for a client that sends too slowly), and only then a request slot.
  Slots are held only by requests whose whole body has arrived: clients that trickle their
  uploads hold none, are cut off after a few seconds, and normal clients are served meanwhile.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response, upload_too_large
from service.metrics import ServiceMetrics
from service.security import UNAUTHORIZED, api_key_ok
from service.state import ServiceState
from service.uploads import UploadRule, UploadTooSlow, read_body, replay

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
        if not heavy:
            return await self.app(scope, _limited(receive, limit), send)
        busy = self._busy()
        if busy is not None:
            return await busy(scope, receive, send)
        body = await self._upload(scope, receive, send)
        if body is None:
            return  # answered (408, 413, 429), or the client left
        busy = self._busy()  # the slots may have filled while the body arrived
        if busy is not None:
            return await busy(scope, receive, send)
        self.state.in_flight += 1
        self.state.metrics.admitted.set(self.state.in_flight)
        try:
            await self.app(scope, replay(body, receive), send)
        finally:
            self.state.in_flight -= 1
            self.state.metrics.admitted.set(self.state.in_flight)

    def _busy(self) -> JSONResponse | None:
        """The 429 when ``max_queue`` requests are in flight, else None."""
        settings = self.state.settings
        if self.state.in_flight < settings.max_queue:
            return None
        self.state.metrics.rejected.inc("queue_full")
        engine = self.state.engine
        retry = str(engine.batcher.retry_after() if engine else 1)
        detail = (
            f"busy: {self.state.in_flight} requests in flight (BPR_MAX_QUEUE={settings.max_queue}); retry in {retry} s"
        )
        return error_response(429, "queue_full", detail, {"Retry-After": retry})

    async def _upload(self, scope: Scope, receive: Receive, send: Send) -> deque[Message] | None:
        """The whole body, or None once an error has been answered or the client left.

        At most ``max_uploads`` bodies are read at once (429 beyond), which bounds the memory
        of bodies waiting for a slot at max_uploads x max_upload_bytes."""
        settings, metrics = self.state.settings, self.state.metrics
        if self.state.uploading >= settings.max_uploads:
            metrics.rejected.inc("uploads_full")
            detail = (
                f"busy: {self.state.uploading} uploads in progress "
                f"(BPR_MAX_UPLOADS={settings.max_uploads}); retry in 1 s"
            )
            await error_response(429, "uploads_full", detail, {"Retry-After": "1"})(scope, receive, send)
            return None
        self.state.uploading += 1
        try:
            return await read_body(receive, settings.max_upload_bytes, UploadRule.of(settings))
        except UploadTooSlow as exc:
            metrics.rejected.inc("upload_too_slow")
            response = error_response(408, "upload_too_slow", str(exc), {"Connection": "close"})
        except StarletteHTTPException:
            metrics.rejected.inc("upload_too_large")
            response = error_response(413, "upload_too_large", upload_too_large(settings.max_upload_bytes))
        finally:
            self.state.uploading -= 1
        await response(scope, receive, send)
        return None


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
