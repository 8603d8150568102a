"""The monitor's Prometheus metrics: the open positions by state and layer, and the age of their prices.

They are read from Redis when Prometheus scrapes (the exporter's thread asks the monitor's event loop), so
nobody pays for them between scrapes and they are as current as the scrape. The layer is the guide's, by the one
freshness rule (`libs.common.freshness`): `live`, `cached` (a fresh or stale cached price: feed down, or the
instrument silent), `manual` (expired: Layer 3). The Layer 0 safety net's state of each of those positions is
its hash's `net_state` (`libs.common.safety_net`), read in one more pipelined batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import TimeoutError as FutureTimeout

from loguru import logger
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.common import keys
from libs.common.clock import Clock
from libs.common.freshness import FreshnessPolicy, PriceTruth, Verdict, read_feed_liveness
from libs.common.models import Position, PositionState
from libs.common.settings import Settings
from services.monitor.snapshot import SnapshotReader

LAYERS = ("live", "cached", "manual")
_LAYER_OF = {
    Verdict.LIVE: "live",
    Verdict.CACHED_FRESH: "cached",
    Verdict.CACHED_STALE: "cached",
    Verdict.EXPIRED: "manual",
}
_STATES = (PositionState.OPEN, PositionState.CLOSING)
NET_STATES = ("placing", "active", "retrying", "unknown", "fired", "cancelled", "ended", "refused", "none")
_SCRAPE_TIMEOUT_S = 5.0


class PositionsCollector(Collector):
    """`guard_positions{state,layer}`, `guard_price_age_seconds{symbol}` and `guard_safety_nets{state}`, read at
    scrape time."""

    def __init__(self, redis: Redis, settings: Settings, clock: Clock, loop: asyncio.AbstractEventLoop) -> None:
        self._redis = redis
        self._policy = FreshnessPolicy.from_settings(settings)
        self._clock = clock
        self._loop = loop
        self._net_on = settings.safety_net == "on"
        self._reader = SnapshotReader(redis)
        self._reading = asyncio.Lock()  # two scrapers at once share one reader's caches: one read at a time

    async def read(self) -> tuple[dict[tuple[str, str], int], dict[str, float], dict[str, int]]:
        """(position count per (state, layer), true price age in s per open symbol with a cached price,
        count of those positions per safety-net state)."""
        async with self._reading:
            feed = await read_feed_liveness(self._redis, self._policy, self._clock)
            snapshot = await self._reader.read()
            guarded = {
                symbol: position
                for symbol, position in snapshot.positions.items()
                if isinstance(position, Position) and position.state in _STATES
            }
            net_states = await self._net_states(list(guarded))
        now = self._clock.now()
        counts = {(str(state), layer): 0 for state in _STATES for layer in LAYERS}
        ages: dict[str, float] = {}
        for symbol, position in guarded.items():
            cached = snapshot.prices.get(symbol)
            freshness = self._policy.judge(cached if isinstance(cached, PriceTruth) else None, now, feed)
            counts[(str(position.state), _LAYER_OF[freshness.verdict])] += 1
            if freshness.age_s is not None:
                ages[symbol] = freshness.age_s
        nets = dict.fromkeys(NET_STATES, 0)
        for state in net_states:
            if state in nets:
                nets[state] += 1
        return counts, ages, nets

    async def _net_states(self, symbols: list[str]) -> list[str]:
        """The stored safety-net state of each symbol; none stored yet reads as `placing` (the keeper has yet to
        place it), or `none` when the safety net is turned off."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for symbol in symbols:
                pipe.hget(keys.position(symbol), "net_state")
            values = await pipe.execute()
        unset = "placing" if self._net_on else "none"
        return [str(value or unset) for value in values]

    def describe(self) -> Iterator[Metric]:
        # Registering calls this instead of collect(), which would wait on the very loop that registers.
        yield from self._families({}, {}, {})

    def collect(self) -> Iterator[Metric]:
        future = asyncio.run_coroutine_threadsafe(self.read(), self._loop)
        try:
            counts, ages, nets = future.result(timeout=_SCRAPE_TIMEOUT_S)
        except (FutureTimeout, RedisError, OSError) as exc:
            future.cancel()
            logger.warning(f"Position metrics unavailable this scrape: {type(exc).__name__}")
            return
        yield from self._families(counts, ages, nets)

    @staticmethod
    def _families(counts: dict[tuple[str, str], int], ages: dict[str, float], nets: dict[str, int]) -> Iterator[Metric]:
        positions = GaugeMetricFamily(
            "guard_positions", "Guarded positions by state and the guide's layer", labels=["state", "layer"]
        )
        for (state, layer), count in sorted(counts.items()):
            positions.add_metric([state, layer], count)
        yield positions
        age = GaugeMetricFamily(
            "guard_price_age_seconds", "Age of the cached price of each open position's symbol", labels=["symbol"]
        )
        for symbol, seconds in sorted(ages.items()):
            age.add_metric([symbol], round(seconds, 3))
        yield age
        safety_nets = GaugeMetricFamily(
            "guard_safety_nets", "Open and closing positions by their Layer 0 safety net's state", labels=["state"]
        )
        for state, count in nets.items():
            safety_nets.add_metric([state], count)
        yield safety_nets
