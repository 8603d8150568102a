"""Connection health: the guide's shape plus what its decision tree needs, in one Redis round trip.

One script call reads the feed's status hash, its heartbeat, the feed lease and live feed instances, the cache
count and newest entry (from the index), the open-position symbols, picks the listed symbols (open positions
first, then the requested ones or the newest from the index) and returns each one's freshness fields (`ltp`,
`as_of`, silence, REST); the verdict per entry is `libs.common.freshness`'s. A pipeline of the same reads costs
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
from libs.common.feed_lease import leadership_from
from libs.common.freshness import TRUTH_FIELDS, Freshness, FreshnessPolicy, PriceTruth, heartbeat_age
from libs.common.models import FeedStatus, MalformedRecord
from libs.common.money import rupees
from libs.common.settings import Settings

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


# KEYS: feed:status, heartbeat:feed, prices:index, positions:open, feed:lease, instances:feed, safety_net:lease.
# ARGV: oldest valid as_of, limit, price key prefix, oldest live heartbeat, then the requested symbols (none:
# sample the index).
# Returns: feed:status as a flat list, heartbeat (or false), cached count, newest as_of (or false), the number of
# open-position symbols, the feed lease as a flat list, its PTTL, the live feed instances, the monitor instance
# keeping the safety nets (or false), then the symbol and its
# price's TRUTH_FIELDS (false when absent) for each listed symbol, open ones first.
_HEALTH = """
local oldest, limit, prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local status = redis.call('HGETALL', KEYS[1])
local beat = redis.call('GET', KEYS[2])
local count = redis.call('ZCOUNT', KEYS[3], oldest, '+inf')
local newest = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
local open = redis.call('SMEMBERS', KEYS[4])
table.sort(open)
local wanted = {}
if #ARGV > 4 then
  for i = 5, #ARGV do wanted[#wanted + 1] = ARGV[i] end
else
  wanted = redis.call('ZREVRANGEBYSCORE', KEYS[3], '+inf', oldest, 'LIMIT', 0, limit)
end
local lease, feeds = redis.call('HGETALL', KEYS[5]), redis.call('ZRANGEBYSCORE', KEYS[6], ARGV[4], '+inf')
local keeper = redis.call('HGET', KEYS[7], 'instance')
local out = {status, beat, count, newest[2] or false, #open, lease, redis.call('PTTL', KEYS[5]), feeds, keeper}
local cap, seen, listed, n = math.max(limit, #open), {}, 0, #out
for _, list in ipairs({open, wanted}) do
  for _, symbol in ipairs(list) do
    if listed < cap and not seen[symbol] then
      seen[symbol], listed = true, listed + 1
      local row = redis.call('HMGET', prefix .. symbol, FIELDS)
      SLOTS = symbol, VALUES
      n = n + WIDTH
    end
  end
end
return out
"""
# Each row written at its own index: `out[#out + 1]` costs a length search per value (~20 % of the script's
# time at 200 listed symbols).
_HEALTH = (
    _HEALTH.replace("FIELDS", ", ".join(f"'{name}'" for name in TRUTH_FIELDS))
    .replace("SLOTS", ", ".join(f"out[n + {i}]" for i in range(1, len(TRUTH_FIELDS) + 2)))
    .replace("VALUES", ", ".join(f"row[{i}]" for i in range(1, len(TRUTH_FIELDS) + 1)))
    .replace("WIDTH", str(len(TRUTH_FIELDS) + 1))
)


def choose_branch(
    feed_live: bool, quiet_s: float | None, worst: PriceStatus, settings: Settings, *, degraded: bool
) -> Branch:
    """Which branch of the guide's decision tree applies now.

    `worst` is the layer of the oldest price among open positions (or of the newest cached price when there
    are none). `degraded` is True when the feed is live but something is still catching up (an open position
    without a fresh price, or a mute connection).
    """
    if feed_live:
        quiet = quiet_s is not None and quiet_s > settings.feed_silence_timeout_s
        return "fallback" if degraded or quiet else "live"
    return {"fresh": "fresh_cache", "stale": "stale_cache", "expired": "expired"}[worst]  # type: ignore[return-value]


def _modes(raw: str) -> dict[str, str]:
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _age(now: float, then: float | None) -> float | None:
    return None if then is None else round(max(0.0, now - then), 3)


def _older(a: Freshness, b: Freshness) -> bool:
    """`a` is a worse price than `b`: no price at all, or an older one."""
    if a.age_s is None or b.age_s is None:
        return a.age_s is None and b.age_s is not None
    return a.age_s > b.age_s


class HealthReader:
    """Builds the `ConnectionHealth` body for one request."""

    def __init__(self, redis: Redis, settings: Settings, clock: Clock) -> None:
        self._redis = redis
        self._settings = settings
        self._clock = clock
        self._health = redis.register_script(_HEALTH)
        self._policy = FreshnessPolicy.from_settings(settings)

    async def read(self, limit: int, symbols: Sequence[str] | None) -> dict[str, Any]:
        """Health with every open-position symbol first, then `symbols` (or the newest) up to `limit` entries,
        as the JSON body of `ConnectionHealth` (plain dicts: no model per entry on the hot path)."""
        now = self._clock.now()
        raw: list[Any] = await self._health(
            keys=[
                keys.FEED_STATUS, keys.heartbeat("feed"), keys.PRICE_INDEX, keys.OPEN_POSITIONS, keys.FEED_LEASE,
                keys.instances("feed"), keys.SAFETY_NET_LEASE,
            ],
            args=[
                now - self._settings.price_cache_ttl_s, limit, keys.PRICE_PREFIX, now - self._settings.heartbeat_ttl_s,
                *(symbols or ()),
            ],
        )  # fmt: skip
        status_flat, beat_raw, count, newest, n_open, lease_flat, lease_pttl_ms, feeds_alive, keeper = raw[:9]
        lease = dict(zip(lease_flat[::2], lease_flat[1::2], strict=True))
        leadership = leadership_from(lease, int(lease_pttl_ms), list(feeds_alive), now)
        try:
            feed = FeedStatus.from_redis(dict(zip(status_flat[::2], status_flat[1::2], strict=True)))
            feed_error = feed.last_error
        except MalformedRecord as exc:
            feed, feed_error = FeedStatus(), str(exc)
        beat_age = heartbeat_age(beat_raw, now)
        feed_alive = beat_age is not None and beat_age < self._settings.heartbeat_ttl_s
        liveness = self._policy.feed(feed, beat_age)
        last_update = float(newest) if newest is not None else None

        width = 1 + len(TRUTH_FIELDS)
        rows = raw[9:]
        held_end = n_open * width  # the script lists the open-position symbols first, each once
        entries: dict[str, dict[str, Any]] = {}
        counts = {"fresh": 0, "stale": 0, "expired": 0}
        worst_open: Freshness | None = None
        judge, from_row = self._policy.judge, PriceTruth.from_row
        for i in range(0, len(rows), width):  # ~200 entries a request: no dict, dataclass or property more than needed
            symbol, row = rows[i], rows[i + 1 : i + width]
            try:
                truth = from_row(row) if row[0] is not None and row[1] is not None else None
            except ValueError:  # a corrupt hash reads as no price; the monitor reports it
                truth = None
            freshness = judge(truth, now, liveness)
            status, age_s = freshness.status, freshness.age_s
            held = i < held_end
            entries[symbol] = {  # CacheEntry's fields, in its order (tests/api/test_health.py holds it to the schema)
                "price": rupees(truth.ltp) if truth is not None and status != "expired" else None,
                "age_seconds": None if age_s is None else int(age_s),
                "is_stale": freshness.is_stale,
                "status": status,
                "has_open_position": held,
                "source": freshness.source,  # a StrEnum: orjson writes its value, without enum's `.value` property
                "reason": freshness.reason,
            }
            if held:
                counts[status] += 1
                if worst_open is None or _older(freshness, worst_open):
                    worst_open = freshness

        quiet_s = _age(now, feed.last_message_at)
        if n_open:
            worst = worst_open.status if worst_open is not None else "expired"
        else:
            worst = self._policy.layer(_age(now, last_update))
        branch = choose_branch(
            liveness.live, quiet_s, worst, self._settings, degraded=bool(counts["stale"] or counts["expired"])
        )
        leader = leadership.public()
        rest_polling = feed_alive and feed.rest_polling
        return {  # ConnectionHealth's shape, built without a model per entry (the api's hot path)
            "timestamp": ist_iso(now),
            "websocket": {
                "connected": liveness.live,
                "subscribed_symbols": feed.subscribed_symbols,
                "mode": feed.mode,
                "modes": _modes(feed.other_modes),
                "reconnect_attempts": feed.reconnect_attempts,
                "network_errors": feed.network_errors,
                "state": feed.state.value,
                "feed_alive": feed_alive,
                "feed_heartbeat_age_s": beat_age,
                "seconds_since_last_message": quiet_s,
                "last_error": feed_error,
                "price_source": "websocket" if liveness.live else "rest" if rest_polling else "none",
            },
            "price_cache": {
                "cached_symbols": int(count),
                "last_update": last_update,
                "seconds_since_last_update": _age(now, last_update),
                "stale_after_s": float(self._settings.price_stale_after_s),
                "expires_after_s": int(self._settings.price_cache_ttl_s),
                "open_positions": counts,
                "cache_entries": entries,
            },
            "advice_branch": branch,
            "advice": ADVICE[branch],
            "feed_leadership": {
                "leader": leader["leader"],
                "fencing_token": leader["fencing_token"],
                "leader_since": leader["leader_since"],
                "lease_age_s": leader["lease_age_s"],
                "lease_expires_in_s": leader["lease_expires_in_s"],
                "standbys": list(leader["standbys"]),
            },
            "safety_net_keeper": str(keeper) if keeper else None,
            "expiring_today": [],
        }
