"""The tick path knows a position before its first tick notice, through real events and reads.

The interleavings (a sweep that read before an event, a reopen seen before the previous close ends, a stale
read after a failed close) are plain inputs and outputs of the core in test_core.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from redis.asyncio import Redis

from libs.common.clock import ManualClock
from libs.common.models import CloseReason, PositionState
from libs.common.positions import PositionStore
from libs.common.settings import Settings
from tests.helpers import eventually
from tests.monitor.conftest import long_bosch, set_feed, write_price

pytestmark = pytest.mark.integration


async def last_event(store: PositionStore) -> str:
    return json.dumps((await store.recent_events(1))[0])


async def state_of(store: PositionStore, symbol: str) -> PositionState | None:
    position = await store.get(symbol)
    return None if position is None else position.state


async def test_an_opened_event_is_watched_at_once_and_its_first_tick_decides(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore, make_monitor: Any
) -> None:
    monitor = make_monitor()
    await store.open(long_bosch())
    monitor.on_event(await last_event(store))
    assert monitor.watched["BOSCHLTD"].stop_loss == 69825  # no round trip: learned from the event itself
    notice = await write_price(redis, settings, "BOSCHLTD", "690.00", clock.now())
    assert monitor.on_notice(notice) == 1
    await monitor.drain()
    assert await state_of(store, "BOSCHLTD") is PositionState.CLOSED


async def test_a_notice_that_arrives_while_a_refresh_reads_is_decided_when_it_lands(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore, make_monitor: Any
) -> None:
    monitor = make_monitor()
    await store.open(long_bosch())
    monitor.on_event(json.dumps({"kind": "reopened", "symbol": "BOSCHLTD"}))  # no position in it: read it
    notice = await write_price(redis, settings, "BOSCHLTD", "690.00", clock.now())
    assert monitor.on_notice(notice) == 0  # not known yet, kept for the refresh

    async def closed() -> bool:
        await monitor.drain()
        return await state_of(store, "BOSCHLTD") is PositionState.CLOSED

    await eventually(closed, timeout_s=3)
    assert monitor.sweeps == 0  # the tick path decided it, not a sweep


async def test_events_carry_the_revision_the_watch_keeps_the_newest_copy_by(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore, make_monitor: Any
) -> None:
    monitor = make_monitor()
    await store.open(long_bosch())
    monitor.on_event(await last_event(store))
    assert monitor.watched["BOSCHLTD"].rev == 1
    await store.update_levels("BOSCHLTD", stop_loss=70000, take_profit=None)
    levels = json.loads(await last_event(store))
    assert levels["rev"] == 2
    monitor.on_event(json.dumps(levels))
    await eventually(lambda: monitor.watched["BOSCHLTD"].stop_loss == 70000, timeout_s=3)
    await store.claim("BOSCHLTD", CloseReason.EMERGENCY)  # the api claims it; its "closing" event carries rev 3
    monitor.on_event(json.dumps({"kind": "closing", "symbol": "BOSCHLTD", "rev": 3}))
    assert monitor.watched == {}
    await write_price(redis, settings, "BOSCHLTD", "690.00", clock.now())
    await set_feed(redis, settings, clock, live=True)
    assert (await monitor.sweep_once()).triggered == 0  # read as closing: no second close from the monitor
    assert monitor.watched == {}
