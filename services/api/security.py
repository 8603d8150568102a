"""Who may talk to the api, who may change things, and how big a request may be.

Only requests naming an allowed `Host` are answered (loopback names, `API_HOST`, `API_ALLOWED_HOSTS`): a web page
the trader opens cannot reach the loopback api through DNS rebinding, since its requests carry the page's own host.
Bound to loopback the api trusts the machine; bound elsewhere it refuses to start without `API_KEY`. Whenever a key
is set every endpoint requires it (`Authorization: Bearer` or `X-API-Key`), reads too unless `API_PUBLIC_READS`.
JSON bodies must say so (`Content-Type: application/json`, FastAPI's strict content type): a page's "simple"
cross-site POST (text/plain, no preflight) is refused.
"""

from __future__ import annotations

import hmac
import json

from fastapi import HTTPException, Request, status
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.common.settings import ConfigError, Settings

_BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def check_bind(settings: Settings) -> None:
    """Raise ConfigError when the api would listen beyond loopback without an API key."""
    if not settings.api_bound_to_loopback and not settings.api_key.get_secret_value():
        raise ConfigError(
            f"config error: API_KEY must be set when API_HOST is {settings.api_host!r} (not loopback); "
            "set API_KEY or bind API_HOST=127.0.0.1"
        )


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def allowed_hosts(settings: Settings) -> list[str]:
    """The `Host` names the api answers: loopback, `API_HOST` when it is a specific address, `API_ALLOWED_HOSTS`."""
    hosts = list(LOOPBACK_HOSTS)
    if settings.api_host not in ("0.0.0.0", "::", ""):
        hosts.append(f"[{settings.api_host}]" if ":" in settings.api_host else settings.api_host)
    hosts += [h.strip().lower() for h in settings.api_allowed_hosts if h.strip()]
    return list(dict.fromkeys(h.lower() for h in hosts))


async def require_read_access(request: Request) -> None:
    """App-wide dependency: reads (GET/HEAD) need the key when one is set, unless `API_PUBLIC_READS`.
    (async: FastAPI would run a plain `def` in its thread pool, a thread hop on every request.)"""
    settings: Settings = request.app.state.settings
    if request.method in ("GET", "HEAD") and not settings.api_public_reads:
        await require_api_key(request)


def _presented_key(request: Request) -> str | None:
    header = request.headers.get("x-api-key")
    if header:
        return header
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


async def require_api_key(request: Request) -> None:
    """Dependency of every mutating endpoint: 401 unless the configured key is presented (if one is set)."""
    settings: Settings = request.app.state.settings
    expected = settings.api_key.get_secret_value()
    if not expected:
        return
    presented = _presented_key(request)
    if presented is None or not hmac.compare_digest(presented.encode(), expected.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong API key: send 'Authorization: Bearer <API_KEY>' or 'X-API-Key: <API_KEY>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 before any endpoint sees it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._too_large(send)
            return
        # Small limit: read the whole body first (also catches chunked bodies), then replay it.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        payload = json.dumps({"detail": f"request body larger than {self.max_bytes} bytes"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})
