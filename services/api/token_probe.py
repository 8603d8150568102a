"""Does a token work? Asks Upstox (the profile for the access token, an LTP read for the analytics token),
and remembers the answer briefly, per token.

The token goes only into the Authorization header; the answer names no part of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from libs.common.clock import Clock, ist_iso
from libs.common.credentials import Credentials
from libs.common.settings import Settings

_LTP_PROBE_KEY = "NSE_INDEX|Nifty 50"


@dataclass(frozen=True, slots=True)
class TokenVerdict:
    valid: bool | None  # None: the endpoint could not be asked
    checked_at: float
    detail: str
    user_id: str = ""


async def check_access_token(http: httpx.AsyncClient, api_base: str, token: str, now: float) -> TokenVerdict:
    """Ask `GET /v2/user/profile` whether `token` is a working access token (and whose it is)."""
    return await _ask(http, f"{api_base}/v2/user/profile", token, now, "profile endpoint")


async def check_analytics_token(http: httpx.AsyncClient, api_base: str, token: str, now: float) -> TokenVerdict:
    """Ask `GET /v3/market-quote/ltp` (one key) whether `token` can read market data."""
    url = f"{api_base}/v3/market-quote/ltp"
    return await _ask(http, url, token, now, "LTP endpoint", params={"instrument_key": _LTP_PROBE_KEY})


async def _ask(http: httpx.AsyncClient, url: str, token: str, now: float, what: str, **kw: Any) -> TokenVerdict:
    if not token:
        return TokenVerdict(False, now, "no token configured")
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    try:
        resp = await http.get(url, headers=headers, **kw)
    except httpx.HTTPError as exc:
        return TokenVerdict(None, now, f"{what} unreachable: {type(exc).__name__}")
    if resp.status_code == 200:
        return TokenVerdict(True, now, f"{what} accepted the token", _user_id(resp))
    if resp.status_code in (401, 403):
        return TokenVerdict(False, now, f"{what} rejected the token ({resp.status_code}): {_reason(resp)}; renew it")
    return TokenVerdict(None, now, f"{what} answered {resp.status_code}; token state unknown")


def _user_id(resp: httpx.Response) -> str:
    try:
        return str(resp.json()["data"].get("user_id") or "")
    except (ValueError, KeyError, TypeError, AttributeError):
        return ""


def _reason(resp: httpx.Response) -> str:
    """The broker's own words (`UDAPI100050 Invalid token used to access API`), never the request."""
    try:
        err = resp.json()["errors"][0]
        return f"{err.get('error_code') or err.get('errorCode')} {err.get('message')}"[:200]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return "no reason given"


_Check = Callable[[httpx.AsyncClient, str, str, float], Awaitable[TokenVerdict]]


class TokenProbe:
    """The verdicts `/status` shows, cached for `token_probe_cache_s` per token (a new token is probed at once)."""

    def __init__(self, settings: Settings, clock: Clock, http: httpx.AsyncClient, credentials: Credentials) -> None:
        self._settings = settings
        self._clock = clock
        self._http = http
        self._credentials = credentials
        self._last: dict[str, tuple[str, TokenVerdict]] = {}  # kind -> (token, verdict)
        self._lock = asyncio.Lock()

    async def verdict(self) -> TokenVerdict:
        """The access token's verdict (profile probe)."""
        token = await self._credentials.access()
        return await self._cached("access", token, check_access_token)

    async def analytics_verdict(self) -> TokenVerdict | None:
        """The analytics token's verdict (LTP probe), None when none is configured."""
        if not self._credentials.has_analytics:
            return None
        return await self._cached("analytics", self._credentials.analytics_token, check_analytics_token)

    async def _cached(self, kind: str, token: str, check: _Check) -> TokenVerdict:
        async with self._lock:
            last = self._last.get(kind)
            now = self._clock.now()
            if last is not None and last[0] == token and now - last[1].checked_at < self._settings.token_probe_cache_s:
                return last[1]
            verdict = await check(self._http, self._settings.api_base, token, now)
            self._last[kind] = (token, verdict)
            return verdict


def checked_at_iso(verdict: TokenVerdict) -> str:
    return ist_iso(verdict.checked_at)
