"""The monitor's position metrics: counted by state and the guide's layer, price ages, read on a scrape."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.core import Metric
from redis.asyncio import Redis

from libs.common import keys
from libs.common.clock import ManualClock
from libs.common.models import CloseReason
from libs.common.positions import PositionStore
from libs.common.settings import Settings
from services.monitor.metrics import PositionsCollector
from tests.monitor.conftest import (
    compressed,
    long_bosch,
    long_kaynes,
    set_feed,
    short_reliance,
    write_price,
)

pytestmark = pytest.mark.integration


def _samples(families: list[Metric]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


async def test_positions_by_layer_and_their_price_ages_as_a_scrape_sees_them(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore
) -> None:
    msettings = compressed(settings, price_stale_after_s=30.0, price_cache_ttl_s=300)
    now = clock.now()
    for position in (long_bosch(), long_kaynes(), short_reliance()):
        await store.open(position)
    await write_price(redis, msettings, "BOSCHLTD", "720.00", now - 5)  # fresh cached
    await write_price(redis, msettings, "KAYNES", "200.00", now - 45)  # stale cached
    await store.claim("KAYNES", CloseReason.TAKE_PROFIT)  # a close in flight
    # RELIANCE has no price at all: Layer 3
    await set_feed(redis, msettings, clock, live=False)
    collector = PositionsCollector(redis, msettings, clock, asyncio.get_running_loop())

    # The exporter's thread asks the monitor's loop, as a Prometheus scrape does.
    samples = _samples(await asyncio.to_thread(lambda: list(collector.collect())))

    assert samples[("guard_positions", (("layer", "cached"), ("state", "open")))] == 1
    assert samples[("guard_positions", (("layer", "cached"), ("state", "closing")))] == 1
    assert samples[("guard_positions", (("layer", "manual"), ("state", "open")))] == 1
    assert samples[("guard_positions", (("layer", "live"), ("state", "open")))] == 0
    assert samples[("guard_price_age_seconds", (("symbol", "BOSCHLTD"),))] == pytest.approx(5, abs=0.01)
    assert samples[("guard_price_age_seconds", (("symbol", "KAYNES"),))] == pytest.approx(45, abs=0.01)
    assert ("guard_price_age_seconds", (("symbol", "RELIANCE"),)) not in samples

    await set_feed(redis, msettings, clock, live=True)
    samples = _samples(await asyncio.to_thread(lambda: list(collector.collect())))
    assert samples[("guard_positions", (("layer", "live"), ("state", "open")))] == 1  # BOSCHLTD
    assert samples[("guard_positions", (("layer", "manual"), ("state", "open")))] == 1  # still no price
    assert [f.name for f in collector.describe()] == [
        "guard_positions",
        "guard_price_age_seconds",
        "guard_safety_nets",
    ]


async def test_safety_nets_counted_by_their_state_every_state_present(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore
) -> None:
    for position in (long_bosch(), long_kaynes(), short_reliance()):
        await store.open(position)
    await redis.hset(keys.position("BOSCHLTD"), "net_state", "active")
    await redis.hset(keys.position("KAYNES"), "net_state", "active")
    await store.claim("KAYNES", CloseReason.TAKE_PROFIT)  # closing positions are still counted
    # RELIANCE has no net_state: with the safety net off that is `none`
    collector = PositionsCollector(redis, compressed(settings), clock, asyncio.get_running_loop())

    samples = _samples(await asyncio.to_thread(lambda: list(collector.collect())))
    nets = {labels[0][1]: value for (name, labels), value in samples.items() if name == "guard_safety_nets"}
    assert nets == {
        "placing": 0,
        "active": 2,
        "retrying": 0,
        "unknown": 0,
        "fired": 0,
        "cancelled": 0,
        "ended": 0,
        "refused": 0,
        "none": 1,
    }

    await redis.hset(keys.position("BOSCHLTD"), "net_state", "retrying")
    samples = _samples(await asyncio.to_thread(lambda: list(collector.collect())))
    assert samples[("guard_safety_nets", (("state", "active"),))] == 1
    assert samples[("guard_safety_nets", (("state", "retrying"),))] == 1
    # with it on, a net not stored yet is one the keeper has still to place
    collector = PositionsCollector(
        redis, settings.model_copy(update={"safety_net": "on"}), clock, asyncio.get_running_loop()
    )
    samples = _samples(await asyncio.to_thread(lambda: list(collector.collect())))
    assert samples[("guard_safety_nets", (("state", "placing"),))] == 1
    assert samples[("guard_safety_nets", (("state", "none"),))] == 0
