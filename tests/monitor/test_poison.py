"""Poison-proof: one absurd value (read from Redis or in a notice) is counted and skipped; it never stops the sweep,
the tick path, or another symbol's protection."""

from __future__ import annotations

import json
from typing import Any

import pytest
from redis.asyncio import Redis

from libs.common import keys
from libs.common.clock import ManualClock
from libs.common.models import PositionState, PriceSource
from libs.common.positions import PositionStore
from libs.common.settings import Settings
from tests.monitor.conftest import LogLines, long_bosch, long_kaynes, set_feed, write_price

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("bad", ["1e26", "-5.00", "nan"])
async def test_an_absurd_price_never_stops_another_symbols_stop_loss(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore, logs: LogLines, make_monitor: Any,
    bad: str,
) -> None:  # fmt: skip
    await set_feed(redis, settings, clock, live=True)
    await store.open(long_kaynes())
    await store.open(long_bosch())
    await write_price(redis, settings, "BOSCHLTD", "735.00", clock.now())
    monitor = make_monitor()
    await monitor.start()
    await monitor.sweep_once()

    # The tick path: one notice carries the absurd price first and BOSCHLTD crossing its SL after it.
    await redis.hset(keys.price("KAYNES"), mapping={"ltp": bad, "as_of": repr(clock.now()), "instrument_key": "x"})
    notice = json.dumps({"as_of": clock.now(), "prices": {"KAYNES": bad, "BOSCHLTD": "690.00"}})
    assert monitor.on_notice(notice) == 1
    await monitor.drain()
    assert monitor.bad_notices == 1
    bosch = await store.get("BOSCHLTD")
    assert bosch is not None and bosch.state is PositionState.CLOSED
    assert [(r.symbol, r.price_source) for r in await store.journal()] == [("BOSCHLTD", PriceSource.LIVE)]

    # The sweep: KAYNES's corrupt hash is reported once and skipped; sweeps go on and keep it open.
    for _ in range(3):
        report = await monitor.sweep_once()
        assert report.malformed == 1
    assert logs.count("Skipping malformed record price:KAYNES") == 1
    kaynes = await store.get("KAYNES")
    assert kaynes is not None and kaynes.state is PositionState.OPEN


async def test_the_sweep_closes_one_symbol_while_another_price_is_absurd(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore, make_monitor: Any
) -> None:
    await set_feed(redis, settings, clock, live=False)
    await store.open(long_kaynes())
    await store.open(long_bosch())
    await redis.hset(keys.price("KAYNES"), mapping={"ltp": "1e26", "as_of": repr(clock.now()), "instrument_key": "x"})
    await write_price(redis, settings, "BOSCHLTD", "690.00", clock.now() - 5)
    monitor = make_monitor()
    await monitor.start()
    report = await monitor.sweep_once()
    await monitor.drain()
    assert (report.malformed, report.triggered) == (1, 1)
    assert [(r.symbol, r.price_source) for r in await store.journal()] == [("BOSCHLTD", PriceSource.CACHED)]
