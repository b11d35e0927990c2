"""Errors as JSON: every failure a client can cause is a 4xx whose body names the problem.

Body shape, for every error the service sends: ``{"detail": "<one line>", "code": "<token>"}``
(``detail`` as FastAPI uses it, so generic clients show it; ``code`` for programs). Library
errors (:class:`bpr.errors.BprInputError`) are client errors and become 422; anything else
that escapes a handler is a bug: logged with its traceback, answered 500 without internals.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bpr.errors import BprInputError

log = logging.getLogger("bpr.service")


class ServiceError(Exception):
    """An answer other than 200, raised anywhere below a route and turned into JSON here."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers


# The one mapping from a library error (bpr.errors.BprInputError: bad input, one line) to an
# HTTP answer, by which part of the request held the bad input. docs/service.md lists it.
# The client's own input is a 422; the upstream detector's output is the detector's fault,
# not the client's, so a 502.
INPUT_ERRORS: dict[str, tuple[int, str, str]] = {
    "image": (422, "invalid_image", "{exc}"),
    "instances": (422, "invalid_instances", "{exc}"),
    "request": (422, "invalid_input", "{exc}"),
    "detector": (502, "detector_bad_output", "the upstream detector gave an unusable instance: {exc}"),
}


def input_error(exc: BprInputError, part: str) -> ServiceError:
    """The HTTP answer for a library input error raised while handling ``part`` of a request."""
    status, code, template = INPUT_ERRORS[part]
    return ServiceError(status, code, template.format(exc=exc))


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code}, status_code=status, headers=headers)


def _loc(loc: tuple[Any, ...]) -> str:
    """('query', 'nms_iou') -> "query parameter 'nms_iou'"; what a client can act on."""
    if not loc:
        return "request"
    where, *rest = loc
    name = ".".join(str(p) for p in rest)
    kinds = {"query": "query parameter", "header": "header", "path": "path parameter", "body": "form field"}
    return f"{kinds.get(str(where), str(where))} '{name}'" if name else kinds.get(str(where), str(where))


def validation_detail(errors: list[dict[str, Any]]) -> str:
    """One line naming each failing parameter, e.g. "query parameter 'nms_iou': Input should be <= 1"."""
    parts = [f"{_loc(tuple(e.get('loc', ())))}: {e.get('msg', 'invalid')}" for e in errors[:5]]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def install_error_handlers(app: FastAPI, max_upload_bytes: int) -> None:
    """Register the JSON handlers; ``max_upload_bytes`` goes into the 413 message."""

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(BprInputError)
    async def _input_error(_: Request, exc: BprInputError) -> JSONResponse:
        err = input_error(exc, "request")
        return error_response(err.status, err.code, err.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in exc.errors()]
        body = {"detail": validation_detail(exc.errors()), "code": "invalid_parameter", "errors": errors}
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 413:
            return error_response(413, "upload_too_large", upload_too_large(max_upload_bytes))
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return error_response(exc.status_code, f"http_{exc.status_code}", detail, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error (logged on the server)")


def upload_too_large(limit: int) -> str:
    return f"request body is over the limit of {limit} bytes (BPR_MAX_UPLOAD_BYTES)"
