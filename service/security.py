"""Optional API key: with BPR_API_KEY set, /refine, /segment and /v1/models need header X-API-Key.

The check runs twice on purpose: in :class:`service.middleware.GuardMiddleware`, so a caller
without the key is turned away before its upload is read or a queue slot is taken, and as
the ``require_api_key`` dependency, which also puts the scheme into the OpenAPI document.
/healthz, /readyz, /metrics and the docs stay open for probes and scrapers.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from service.errors import ServiceError
from service.settings import Settings
from service.state import get_state

API_KEY_HEADER = "X-API-Key"
UNAUTHORIZED = f"missing or wrong API key: send it in header {API_KEY_HEADER}"

api_key_scheme = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="needed when the server sets BPR_API_KEY"
)


def api_key_ok(settings: Settings, given: str | None) -> bool:
    """True without a configured key; else a constant-time comparison."""
    if settings.api_key is None:
        return True
    if given is None:
        return False
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), settings.api_key.get_secret_value().encode("utf-8")
    )


async def require_api_key(request: Request, key: Annotated[str | None, Security(api_key_scheme)]) -> None:
    if not api_key_ok(get_state(request).settings, key):
        raise ServiceError(401, "unauthorized", UNAUTHORIZED, {"WWW-Authenticate": "ApiKey"})
