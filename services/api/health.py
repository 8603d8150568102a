"""Connection health: the guide's shape plus what its decision tree needs, in two Redis round trips.

Round trip 1 (one pipeline): the feed's status hash, its heartbeat, the cache count, the newest index
entry, the open-position symbols and the sample from the index. Round trip 2: `ltp` and `as_of` of every
listed `price:SYMBOL` in one script call (a redis-py pipeline of 50 HGETALLs costs ~3 ms of client-side
parsing; one script reply costs ~0.5 ms). No keyspace scan and nothing per symbol, whatever the cache size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from redis.asyncio import Redis

from libs.common import keys
from libs.common.clock import Clock, ist_iso
from libs.common.models import FeedStatus, MalformedRecord
from libs.common.money import Paise, rupees, to_paise
from libs.common.settings import Settings
from services.api.schemas import (
    CacheEntry,
    ConnectionHealth,
    OpenPositionPrices,
    PriceCacheHealth,
    WebSocketHealth,
)

PriceStatus = Literal["fresh", "stale", "expired"]
Branch = Literal["live", "fallback", "fresh_cache", "stale_cache", "expired"]

# The guide's decision tree, one line per branch.
ADVICE: dict[Branch, str] = {
    "live": "WebSocket connected: live prices, nothing to do",
    "fallback": "Automatic fallback in progress, wait for reconnection",
    "fresh_cache": "Position monitoring using fresh cached prices; wait 2-3 minutes for reconnection",
    "stale_cache": (
        "Position monitoring using stale cached prices; monitor logs for SL/TP triggers "
        "and be prepared to close manually"
    ),
    "expired": "Cache expired, no fallback available: manually close risky positions with the emergency API",
}


# KEYS: price:SYMBOL per listed symbol. Returns ltp, as_of per key (false when the hash is gone).
_LISTED = """
local out = {}
for i = 1, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'ltp', 'as_of')
  out[2 * i - 1] = v[1] or false
  out[2 * i] = v[2] or false
end
return out
"""


def price_status(age_s: float | None, settings: Settings) -> PriceStatus:
    """The guide's layers for one price: fresh (< stale threshold), stale (< expiry), expired (none)."""
    if age_s is None or age_s >= settings.price_cache_ttl_s:
        return "expired"
    return "stale" if age_s >= settings.price_stale_after_s else "fresh"


def choose_branch(
    connected: bool, quiet_s: float | None, worst_age_s: float | None, settings: Settings, *, degraded: bool
) -> Branch:
    """Which branch of the guide's decision tree applies now.

    `worst_age_s` is the oldest price among open positions (or the newest cached price when there are
    none); None means no price at all. `degraded` is True when the connection is up but something is
    still catching up (an open position without a fresh price, or a mute connection).
    """
    if connected:
        quiet = quiet_s is not None and quiet_s > settings.feed_silence_timeout_s
        return "fallback" if degraded or quiet else "live"
    status = price_status(worst_age_s, settings)
    return {"fresh": "fresh_cache", "stale": "stale_cache", "expired": "expired"}[status]  # type: ignore[return-value]


def _age(now: float, then: float | None) -> float | None:
    return None if then is None else round(max(0.0, now - then), 3)


class HealthReader:
    """Builds `ConnectionHealth` for one request."""

    def __init__(self, redis: Redis, settings: Settings, clock: Clock) -> None:
        self._redis = redis
        self._settings = settings
        self._clock = clock
        self._listed = redis.register_script(_LISTED)

    async def _prices(self, symbols: Sequence[str]) -> dict[str, tuple[Paise, float]]:
        """(ltp, as_of) of each listed symbol that still has a readable price, in one script call."""
        if not symbols:
            return {}
        flat = await self._listed(keys=[keys.price(s) for s in symbols])
        out: dict[str, tuple[Paise, float]] = {}
        for i, symbol in enumerate(symbols):
            ltp, as_of = flat[2 * i], flat[2 * i + 1]
            if ltp is None or as_of is None:
                continue
            try:
                out[symbol] = (to_paise(ltp), float(as_of))
            except ValueError:
                continue  # a corrupt hash reads as no price; the monitor reports it
        return out

    async def read(self, limit: int, symbols: Sequence[str] | None) -> ConnectionHealth:
        """Health with every open-position symbol first, then `symbols` (or the newest) up to `limit` entries."""
        now = self._clock.now()
        oldest_valid = now - self._settings.price_cache_ttl_s
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.FEED_STATUS)
            pipe.get(keys.heartbeat("feed"))
            pipe.zcount(keys.PRICE_INDEX, oldest_valid, "+inf")
            pipe.zrange(keys.PRICE_INDEX, -1, -1, withscores=True)
            pipe.smembers(keys.OPEN_POSITIONS)
            if symbols is None:
                pipe.zrevrangebyscore(keys.PRICE_INDEX, "+inf", oldest_valid, start=0, num=limit, withscores=True)
            raw: list[Any] = await pipe.execute()
        status_raw, beat_raw, count, newest, open_raw = raw[:5]
        try:
            feed = FeedStatus.from_redis(status_raw)
            feed_error = feed.last_error
        except MalformedRecord as exc:
            feed, feed_error = FeedStatus(), str(exc)
        beat_age = _age(now, float(beat_raw)) if beat_raw is not None else None
        feed_alive = beat_age is not None and beat_age < self._settings.heartbeat_ttl_s
        last_update = float(newest[0][1]) if newest else None

        open_symbols = sorted(str(s) for s in open_raw)
        wanted = list(symbols) if symbols is not None else [str(row[0]) for row in raw[5]]
        listed = list(dict.fromkeys([*open_symbols, *wanted]))
        listed = listed[: max(limit, len(open_symbols))]
        prices = await self._prices(listed)

        entries: dict[str, CacheEntry] = {}
        open_set = set(open_symbols)
        counts = {"fresh": 0, "stale": 0, "expired": 0}
        worst_open_age: float | None = 0.0
        for symbol in listed:
            price = prices.get(symbol)
            age = max(0.0, now - price[1]) if price else None
            status = price_status(age, self._settings)
            entries[symbol] = CacheEntry(
                price=rupees(price[0]) if price and status != "expired" else None,
                age_seconds=int(age) if age is not None else None,
                is_stale=status != "fresh",
                status=status,
                has_open_position=symbol in open_set,
            )
            if symbol in open_set:
                counts[status] += 1
                if worst_open_age is not None:
                    worst_open_age = None if age is None else max(worst_open_age, age)

        connected = feed.connected and feed_alive
        quiet_s = _age(now, feed.last_message_at)
        worst = worst_open_age if open_symbols else _age(now, last_update)
        branch = choose_branch(
            connected, quiet_s, worst, self._settings, degraded=bool(counts["stale"] or counts["expired"])
        )
        return ConnectionHealth(
            timestamp=ist_iso(now),
            websocket=WebSocketHealth(
                connected=connected,
                subscribed_symbols=feed.subscribed_symbols,
                reconnect_attempts=feed.reconnect_attempts,
                network_errors=feed.network_errors,
                state=feed.state.value,
                feed_alive=feed_alive,
                feed_heartbeat_age_s=beat_age,
                seconds_since_last_message=quiet_s,
                last_error=feed_error,
            ),
            price_cache=PriceCacheHealth(
                cached_symbols=int(count),
                last_update=last_update,
                seconds_since_last_update=_age(now, last_update),
                stale_after_s=self._settings.price_stale_after_s,
                expires_after_s=self._settings.price_cache_ttl_s,
                open_positions=OpenPositionPrices(**counts),
                cache_entries=entries,
            ),
            advice_branch=branch,
            advice=ADVICE[branch],
        )
