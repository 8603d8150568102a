"""The tick path knows a position before its first tick notice, whatever the sweep or a finishing close does.

Each case is an interleaving that used to leave a position to the next sweep (a second later).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from libs.common.clock import ManualClock
from libs.common.closing import CloseRequest
from libs.common.models import CloseRecord, PositionState
from libs.common.positions import PositionStore
from libs.common.settings import Settings
from tests.helpers import eventually
from tests.monitor.conftest import long_bosch, long_kaynes, set_feed, write_price

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


async def test_a_sweep_whose_read_began_before_an_open_keeps_the_opened_position(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore, make_monitor: Any
) -> None:
    await set_feed(redis, settings, clock, live=True)
    await store.open(long_kaynes())
    await write_price(redis, settings, "KAYNES", "190.00", clock.now())
    monitor = make_monitor()
    reader = monitor._snapshots
    read_slices = reader.read_slices

    async def read_then_an_open_lands() -> AsyncIterator[Any]:
        async for part in read_slices():
            yield part
        await store.open(long_bosch())  # opened after the sweep's read: its event reaches the tick path first
        monitor.on_event(await last_event(store))

    reader.read_slices = read_then_an_open_lands
    report = await monitor.sweep_once()
    assert report.checked == 1
    assert set(monitor.watched) == {"KAYNES", "BOSCHLTD"}
    notice = await write_price(redis, settings, "BOSCHLTD", "690.00", clock.now())
    assert monitor.on_notice(notice) == 1
    await monitor.drain()
    assert await state_of(store, "BOSCHLTD") is PositionState.CLOSED


async def test_a_reopen_seen_before_the_previous_close_ends_is_watched_and_decided(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore, make_monitor: Any
) -> None:
    monitor = make_monitor()
    await store.open(long_bosch())
    monitor.on_event(await last_event(store))
    closer = monitor._closer
    close = closer.close

    async def close_then_a_reopen_is_seen(request: CloseRequest, **kw: Any) -> CloseRecord:
        record = await close(request, **kw)
        await store.open(long_bosch(stop_loss=70000))  # the "opened" event beats this task's own ending
        monitor.on_event(await last_event(store))
        return record

    closer.close = close_then_a_reopen_is_seen
    assert monitor.on_notice(await write_price(redis, settings, "BOSCHLTD", "690.00", clock.now())) == 1
    await monitor.drain()
    assert monitor.watched["BOSCHLTD"].stop_loss == 70000
    closer.close = close
    assert monitor.on_notice(await write_price(redis, settings, "BOSCHLTD", "695.00", clock.now())) == 1
    await monitor.drain()
    assert await state_of(store, "BOSCHLTD") is PositionState.CLOSED
    assert len(await store.journal()) == 2
