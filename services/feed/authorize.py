"""Step 1 of the Upstox v3 feed handshake: `GET /v3/feed/market-data-feed/authorize` with the Bearer token.

The request goes to the address our own resolver found, while the host name stays in the Host header,
the TLS SNI and the certificate check (httpx's `sni_hostname` extension). TLS verification stays on.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from loguru import logger

from libs.common.logging import tagged

AUTHORIZE_PATH = "/v3/feed/market-data-feed/authorize"
REDIRECT_PATH = "/v3/feed/market-data-feed"

verbose = tagged("VERBOSE")


class AuthRejected(Exception):
    """Upstox refused the token (HTTP 401/403): retrying fast cannot help."""

    def __init__(self, status_code: int, where: str) -> None:
        super().__init__(f"HTTP {status_code} from {where}")
        self.status_code = status_code


class FeedUnavailable(Exception):
    """The feed could not be reached or answered nonsense; `network` tells whether it was a network failure."""

    def __init__(self, reason: str, *, network: bool) -> None:
        super().__init__(reason)
        self.network = network


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A URL split into what we resolve (host) and what we connect to (port), plus its path prefix."""

    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if not parts.hostname:
            raise ValueError(f"no host in {url!r}")
        secure = parts.scheme in ("https", "wss")
        return cls(parts.scheme, parts.hostname, parts.port or (443 if secure else 80), parts.path.rstrip("/"))

    @property
    def secure(self) -> bool:
        return self.scheme in ("https", "wss")

    @property
    def host_header(self) -> str:
        default = 443 if self.secure else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def netloc(address: str, port: int) -> str:
    """`address:port`, bracketing an IPv6 address."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


async def authorize(api: Endpoint, address: str, token: str, ssl_context: ssl.SSLContext, timeout_s: float) -> str:
    """The single-use `wss://...&code=...` feed URI. Raises `AuthRejected` or `FeedUnavailable`."""
    url = f"{'https' if api.secure else 'http'}://{netloc(address, api.port)}{api.path}{AUTHORIZE_PATH}"
    headers = {"Host": api.host_header, "Authorization": f"Bearer {token}", "Accept": "application/json"}
    extensions = {"sni_hostname": api.host} if api.secure else {}
    try:
        async with httpx.AsyncClient(verify=ssl_context, timeout=timeout_s, trust_env=False) as client:
            response = await client.get(url, headers=headers, extensions=extensions)
    except httpx.TransportError as exc:
        logger.error(f"Network error during authorization: {type(exc).__name__}")
        verbose.info(f"Cannot connect to host {api.host}:{api.port} ({exc or type(exc).__name__})")
        raise FeedUnavailable(f"authorization failed: {type(exc).__name__}", network=True) from exc
    if response.status_code in (401, 403):
        raise AuthRejected(response.status_code, "the authorize endpoint")
    if response.status_code != 200:
        raise FeedUnavailable(f"authorize answered HTTP {response.status_code}", network=response.status_code >= 500)
    try:
        data = response.json()["data"]
        uri = data.get("authorized_redirect_uri") or data["authorizedRedirectUri"]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise FeedUnavailable("authorize answered without a feed URI", network=False) from None
    if not isinstance(uri, str) or not uri.startswith(("ws://", "wss://")):
        raise FeedUnavailable("authorize answered an invalid feed URI", network=False)
    return uri
