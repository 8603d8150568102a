"""Connection health: the guide's shape plus what its decision tree needs, in one Redis round trip.

One script call reads the feed's status hash, its heartbeat, the cache count and newest entry (from the
index), the open-position symbols, picks the listed symbols (open positions first, then the requested ones
or the newest from the index) and returns `ltp` and `as_of` of each. A pipeline of the same reads costs
~1.5 ms more of redis-py's client-side work per request. No keyspace scan, nothing per symbol on the wire,
whatever the cache size.
"""

from __future__ import annotations

import json
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


# KEYS: feed:status, heartbeat:feed, prices:index, positions:open.
# ARGV: oldest valid as_of, limit, price key prefix, then the requested symbols (none: sample the index).
# Returns: feed:status as a flat list, heartbeat (or false), cached count, newest as_of (or false), the number of
# open-position symbols, then (symbol, ltp or false, as_of or false) for each listed symbol, open ones first.
_HEALTH = """
local oldest, limit, prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local status = redis.call('HGETALL', KEYS[1])
local beat = redis.call('GET', KEYS[2])
local count = redis.call('ZCOUNT', KEYS[3], oldest, '+inf')
local newest = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
local open = redis.call('SMEMBERS', KEYS[4])
table.sort(open)
local wanted = {}
if #ARGV > 3 then
  for i = 4, #ARGV do wanted[#wanted + 1] = ARGV[i] end
else
  wanted = redis.call('ZREVRANGEBYSCORE', KEYS[3], '+inf', oldest, 'LIMIT', 0, limit)
end
local cap = math.max(limit, #open)
local seen, listed = {}, {}
for _, list in ipairs({open, wanted}) do
  for _, symbol in ipairs(list) do
    if #listed < cap and not seen[symbol] then
      seen[symbol] = true
      listed[#listed + 1] = symbol
    end
  end
end
local out = {status, beat, count, newest[2] or false, #open}
for _, symbol in ipairs(listed) do
  local v = redis.call('HMGET', prefix .. symbol, 'ltp', 'as_of')
  out[#out + 1] = symbol
  out[#out + 1] = v[1] or false
  out[#out + 1] = v[2] or false
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


def _modes(raw: str) -> dict[str, str]:
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _age(now: float, then: float | None) -> float | None:
    return None if then is None else round(max(0.0, now - then), 3)


class HealthReader:
    """Builds `ConnectionHealth` for one request."""

    def __init__(self, redis: Redis, settings: Settings, clock: Clock) -> None:
        self._redis = redis
        self._settings = settings
        self._clock = clock
        self._health = redis.register_script(_HEALTH)

    async def read(self, limit: int, symbols: Sequence[str] | None) -> ConnectionHealth:
        """Health with every open-position symbol first, then `symbols` (or the newest) up to `limit` entries."""
        now = self._clock.now()
        raw: list[Any] = await self._health(
            keys=[keys.FEED_STATUS, keys.heartbeat("feed"), keys.PRICE_INDEX, keys.OPEN_POSITIONS],
            args=[now - self._settings.price_cache_ttl_s, limit, keys.PRICE_PREFIX, *(symbols or ())],
        )
        status_flat, beat_raw, count, newest, n_open = raw[:5]
        try:
            feed = FeedStatus.from_redis(dict(zip(status_flat[::2], status_flat[1::2], strict=True)))
            feed_error = feed.last_error
        except MalformedRecord as exc:
            feed, feed_error = FeedStatus(), str(exc)
        beat_age = _age(now, float(beat_raw)) if beat_raw is not None else None
        feed_alive = beat_age is not None and beat_age < self._settings.heartbeat_ttl_s
        last_update = float(newest) if newest is not None else None

        rows = raw[5:]
        listed = [str(symbol) for symbol in rows[::3]]
        open_symbols = listed[:n_open]
        prices: dict[str, tuple[Paise, float]] = {}
        for symbol, ltp, as_of in zip(listed, rows[1::3], rows[2::3], strict=True):
            if ltp is None or as_of is None:
                continue
            try:
                prices[symbol] = (to_paise(ltp), float(as_of))
            except ValueError:
                continue  # a corrupt hash reads as no price; the monitor reports it

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
                mode=feed.mode,
                modes=_modes(feed.other_modes),
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
