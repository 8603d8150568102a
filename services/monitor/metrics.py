"""The monitor's Prometheus metrics: the open positions by state and layer, and the age of their prices.

They are read from Redis when Prometheus scrapes (the exporter's thread asks the monitor's event loop), so
nobody pays for them between scrapes and they are as current as the scrape. The layer is the guide's, by the one
freshness rule (`libs.common.freshness`): `live`, `cached` (a fresh or stale cached price: feed down, or the
instrument silent), `manual` (expired: Layer 3).
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
_SCRAPE_TIMEOUT_S = 5.0


class PositionsCollector(Collector):
    """`guard_positions{state,layer}` and `guard_price_age_seconds{symbol}`, read at scrape time."""

    def __init__(self, redis: Redis, settings: Settings, clock: Clock, loop: asyncio.AbstractEventLoop) -> None:
        self._redis = redis
        self._policy = FreshnessPolicy.from_settings(settings)
        self._clock = clock
        self._loop = loop
        self._reader = SnapshotReader(redis)
        self._reading = asyncio.Lock()  # two scrapers at once share one reader's caches: one read at a time

    async def read(self) -> tuple[dict[tuple[str, str], int], dict[str, float]]:
        """(position count per (state, layer), true price age in s per open symbol with a cached price)."""
        async with self._reading:
            feed = await read_feed_liveness(self._redis, self._policy, self._clock)
            snapshot = await self._reader.read()
        now = self._clock.now()
        counts = {(str(state), layer): 0 for state in _STATES for layer in LAYERS}
        ages: dict[str, float] = {}
        for symbol, position in snapshot.positions.items():
            if not isinstance(position, Position) or position.state not in _STATES:
                continue
            cached = snapshot.prices.get(symbol)
            freshness = self._policy.judge(cached if isinstance(cached, PriceTruth) else None, now, feed)
            counts[(str(position.state), _LAYER_OF[freshness.verdict])] += 1
            if freshness.age_s is not None:
                ages[symbol] = freshness.age_s
        return counts, ages

    def describe(self) -> Iterator[Metric]:
        # Registering calls this instead of collect(), which would wait on the very loop that registers.
        yield from self._families({}, {})

    def collect(self) -> Iterator[Metric]:
        future = asyncio.run_coroutine_threadsafe(self.read(), self._loop)
        try:
            counts, ages = future.result(timeout=_SCRAPE_TIMEOUT_S)
        except (FutureTimeout, RedisError, OSError) as exc:
            future.cancel()
            logger.warning(f"Position metrics unavailable this scrape: {type(exc).__name__}")
            return
        yield from self._families(counts, ages)

    @staticmethod
    def _families(counts: dict[tuple[str, str], int], ages: dict[str, float]) -> Iterator[Metric]:
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
