"""Layer 2b, between the guide's live and cached layers: while the WebSocket is down but Upstox REST answers, poll
LTP V3 (`GET /v3/market-quote/ltp`) for the instruments of open positions and write those prices with source `rest`.

Open positions are the `feed:subscriptions` hash (kept by the monitor and the api). At most 500 instrument keys go
in one call (Upstox's limit); calls are spaced so the poll stays inside the standard API rate limits (2,000 calls
per 30 minutes: one call per `_MIN_CALL_SPACING_S` at most, however many positions). Response rows are keyed
`SEGMENT:SYMBOL` (e.g. `NSE_EQ:NHPC`, `NSE_INDEX:Nifty 50`) and matched back by their `instrument_token`, never by
that key. A value that is not a plausible price is counted and skipped. Prices are written through
`PriceCache.write_rest`, which publishes a tick notice marked `rest`: the monitor decides on them at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from loguru import logger
from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.common import keys
from libs.common.clock import Clock
from libs.common.dns import DnsFailure, HostResolver
from libs.common.logging import tagged
from libs.common.money import ltp_paise, rupees_str
from libs.common.price_cache import PriceCache, Tick
from libs.common.settings import Settings
from services.feed.authorize import Endpoint, netloc
from services.feed.status import StatusBoard
from services.feed.websocket import FeedConnection, tls_context

LTP_PATH = "/v3/market-quote/ltp"
MAX_KEYS_PER_CALL = 500
_MIN_CALL_SPACING_S = 0.9  # 2,000 calls per 30 min is one call per 0.9 s
_WARN_EVERY_S = 30.0

fallback = tagged("FALLBACK")


class RestPoller:
    """Polls LTP V3 while the WebSocket is down. `run()` is the `feed:rest-poll` task."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        redis: Redis,
        cache: PriceCache,
        status: StatusBoard,
        connection: FeedConnection,
        resolver: HostResolver,
        http: httpx.AsyncClient | None = None,
        *,
        leading: Callable[[], bool] = lambda: True,
    ) -> None:
        self._settings = settings
        self._leading = leading  # only the feed leader polls (and may write): libs/common/feed_lease.py
        self._clock = clock
        self._redis = redis
        self._cache = cache
        self._status = status
        self._connection = connection
        self._resolver = resolver
        self._api = Endpoint.parse(settings.api_base)
        self._http = http or httpx.AsyncClient(
            timeout=settings.broker_timeout_s, verify=tls_context(settings), trust_env=False
        )
        self._warned_at = -1e9
        self.polls = 0
        self.absurd = 0

    async def run(self) -> None:
        try:
            while True:
                await self._clock.sleep(max(self._settings.rest_poll_interval_s, _MIN_CALL_SPACING_S))
                if self._connection.link.live or not self._leading():
                    self._set_polling(False)
                    continue
                try:
                    await self.poll_once()
                except (httpx.HTTPError, ValueError, RedisError, DnsFailure) as exc:
                    self._set_polling(False)
                    self._warn(f"REST LTP poll failed ({type(exc).__name__}: {exc}); retrying")
        finally:
            await self._http.aclose()

    async def poll_once(self) -> int:
        """One round over every open position's instrument; returns how many prices were written.

        Raises httpx.HTTPError (REST down or refusing), ValueError (an unreadable answer), DnsFailure or RedisError.
        The host is resolved like the WebSocket's (system DNS, the fallback servers, the remembered address) and
        keeps its name in the Host header, the TLS SNI and the certificate check."""
        wanted = {str(k): str(s) for s, k in (await self._redis.hgetall(keys.FEED_SUBSCRIPTIONS)).items() if k}
        if not wanted:
            return 0
        token = await self._connection.credentials.market_data()  # analytics token when set, else access
        api = self._api
        resolution = await self._resolver.resolve(api.host)
        url = f"{'https' if api.secure else 'http'}://{netloc(resolution.address, api.port)}{api.path}{LTP_PATH}"
        headers = {"Host": api.host_header, "Authorization": f"Bearer {token}", "Accept": "application/json"}
        extensions = {"sni_hostname": api.host} if api.secure else {}
        instrument_keys = list(wanted)
        written = 0
        for start in range(0, len(instrument_keys), MAX_KEYS_PER_CALL):
            if start:
                await self._clock.sleep(_MIN_CALL_SPACING_S)
            part = instrument_keys[start : start + MAX_KEYS_PER_CALL]
            response = await self._http.get(
                url, params={"instrument_key": ",".join(part)}, headers=headers, extensions=extensions
            )
            response.raise_for_status()
            ticks = self._ticks(response.json(), wanted)
            await self._cache.write_rest(ticks, self._clock.now())
            written += len(ticks)
        self.polls += 1
        self._set_polling(True)
        return written

    def _ticks(self, body: Any, wanted: dict[str, str]) -> list[Tick]:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            raise ValueError("LTP answer without a data object")
        ticks: list[Tick] = []
        for row in data.values():
            if not isinstance(row, dict):
                continue
            key = str(row.get("instrument_token", ""))
            symbol = wanted.get(key)
            if symbol is None:
                continue
            try:
                paise = ltp_paise(str(row.get("last_price")))
            except ValueError:
                self.absurd += 1
                self._status.absurd_prices += 1
                self._warn(f"Skipping absurd REST price for {symbol}: {row.get('last_price')!r}")
                continue
            ticks.append(Tick(symbol, key, rupees_str(paise)))
        return ticks

    def _set_polling(self, polling: bool) -> None:
        if polling == self._status.rest_polling:
            return
        self._status.rest_polling = polling
        if polling:
            fallback.info("WebSocket down, Upstox REST answers: polling LTP for open positions (source rest)")
        else:
            logger.info("REST LTP polling stopped")

    def _warn(self, message: str) -> None:
        now = self._clock.monotonic()
        if now - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = now
            logger.warning(message)
