"""Layer 2b in the monitor: a REST LTP price is decided at once, logged and journaled with its source."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from libs.common import keys
from libs.common.clock import ManualClock
from libs.common.models import PriceSource
from libs.common.positions import PositionStore
from libs.common.price_cache import PriceCache, Tick
from libs.common.settings import Settings
from tests.monitor.conftest import INSTRUMENT_KEYS, LogLines, long_bosch, long_kaynes, set_feed, write_price

pytestmark = pytest.mark.integration


async def test_a_rest_notice_fires_the_stop_loss_as_a_rest_decision(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore, logs: LogLines, make_monitor: Any
) -> None:
    await set_feed(redis, settings, clock, live=False)
    await store.open(long_bosch())
    await write_price(redis, settings, "BOSCHLTD", "720.00", clock.now() - 10)
    monitor = make_monitor()
    await monitor.start()
    await monitor.sweep_once()
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.TICKS_CHANNEL)
    await PriceCache(redis, settings.price_cache_ttl_s).write_rest(
        [Tick("BOSCHLTD", INSTRUMENT_KEYS["BOSCHLTD"], "690.00")], clock.now()
    )
    message = None
    while message is None:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
    await pubsub.aclose()
    assert monitor.on_notice(message["data"]) == 1
    await monitor.drain()
    assert [(r.symbol, r.price_source) for r in await store.journal()] == [("BOSCHLTD", PriceSource.REST)]
    assert logs.lines("FALLBACK", "SL")[-2:] == [
        "[FALLBACK] Using REST price for BOSCHLTD: ₹690.00 (0s old)",
        "[SL] BOSCHLTD: Price ₹690.00 <= SL ₹698.25 (FALLBACK)",
    ]


async def test_the_sweep_reads_a_rest_price_as_rest(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore, make_monitor: Any
) -> None:
    await set_feed(redis, settings, clock, live=False)
    await store.open(long_kaynes())
    await PriceCache(redis, settings.price_cache_ttl_s).write_rest(
        [Tick("KAYNES", INSTRUMENT_KEYS["KAYNES"], "170.00")], clock.now() - 1
    )
    monitor = make_monitor()
    await monitor.start()
    assert (await monitor.sweep_once()).triggered == 1
    await monitor.drain()
    records = await store.journal()
    assert [(r.symbol, r.price_source, r.price_age_s) for r in records] == [("KAYNES", PriceSource.REST, 1.0)]
