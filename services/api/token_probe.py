"""Does the access token work? Asks Upstox's profile endpoint, and remembers the answer briefly.

The token goes only into the Authorization header of the probe; the answer names no part of it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx

from libs.common.clock import Clock, ist_iso
from libs.common.settings import Settings


@dataclass(frozen=True, slots=True)
class TokenVerdict:
    valid: bool | None  # None: the profile endpoint could not be asked
    checked_at: float
    detail: str


class TokenProbe:
    """GET {api_base}/v2/user/profile with the token; cached for `token_probe_cache_s`."""

    def __init__(self, settings: Settings, clock: Clock, http: httpx.AsyncClient) -> None:
        self._settings = settings
        self._clock = clock
        self._http = http
        self._last: TokenVerdict | None = None
        self._lock = asyncio.Lock()

    async def verdict(self) -> TokenVerdict:
        """The cached verdict if it is recent enough, else a fresh probe (one at a time)."""
        async with self._lock:
            last = self._last
            if last is not None and self._clock.now() - last.checked_at < self._settings.token_probe_cache_s:
                return last
            self._last = await self._probe()
            return self._last

    async def _probe(self) -> TokenVerdict:
        now = self._clock.now()
        token = self._settings.access_token.get_secret_value()
        if not token:
            return TokenVerdict(False, now, "no access token configured")
        url = f"{self._settings.api_base}/v2/user/profile"
        try:
            resp = await self._http.get(url, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
        except httpx.HTTPError as exc:
            return TokenVerdict(None, now, f"profile endpoint unreachable: {type(exc).__name__}")
        if resp.status_code == 200:
            return TokenVerdict(True, now, "profile endpoint accepted the token")
        if resp.status_code in (401, 403):
            return TokenVerdict(False, now, f"profile endpoint rejected the token ({resp.status_code}); renew it")
        return TokenVerdict(None, now, f"profile endpoint answered {resp.status_code}; token state unknown")


def checked_at_iso(verdict: TokenVerdict) -> str:
    return ist_iso(verdict.checked_at)
