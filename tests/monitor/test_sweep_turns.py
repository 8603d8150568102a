"""The sweep (and every other pass over all open positions) shares the monitor's event loop with the tick path:
it works in short slices and lets other tasks run between them, so a tick notice is decided while a sweep over
many positions is still in progress."""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime
from typing import Any

import pytest
from redis.asyncio import Redis

from libs.common.broker import UpstoxBroker
from libs.common.clock import IST, ManualClock
from libs.common.fno import expires_on
from libs.common.instruments import InstrumentIndex, load_instruments
from libs.common.models import Position, Side
from libs.common.positions import PositionStore
from libs.common.price_cache import Tick, tick_notice
from libs.common.safety_net import SafetyNet
from libs.common.settings import Settings
from services.monitor.expiry import ExpiryWatch
from services.monitor.safety_net import SafetyNetKeeper
from services.monitor.snapshot import SLICE, SnapshotReader
from tests.monitor.conftest import LogLines, set_feed

pytestmark = pytest.mark.integration


class LoopTurns:
    """Counts event-loop turns given to other tasks: a task that ticks once per turn until stopped."""

    def __init__(self) -> None:
        self.count = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.count += 1
            await asyncio.sleep(0)

    async def __aenter__(self) -> LoopTurns:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *_: Any) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def equity(i: int, **kw: Any) -> Position:
    fields: dict[str, Any] = {
        "symbol": f"EQ{i:03d}", "instrument_key": f"NSE_EQ|EQ{i:03d}", "side": Side.LONG, "quantity": 1,
        "entry_price": 100_000, "stop_loss": 90_000, "take_profit": 110_000, "opened_at": 1.0, **kw,
    }  # fmt: skip
    return Position(**fields)


async def open_many(store: PositionStore, count: int) -> list[Position]:
    positions = [equity(i) for i in range(count)]
    for position in positions:
        await store.open(position)
    return positions


async def test_other_tasks_run_between_snapshot_slices(redis: Redis, store: PositionStore) -> None:
    await open_many(store, 12)
    reader = SnapshotReader(redis, slice_size=3)
    seen: list[int] = []
    async with LoopTurns() as turns:
        async for part in reader.read_slices():
            assert len(part.positions) <= 3
            seen.append(turns.count)
    assert len(seen) == 4
    assert all(later > earlier for earlier, later in itertools.pairwise(seen)), seen


async def test_a_tick_is_decided_while_a_sweep_is_in_progress(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore, make_monitor: Any, logs: LogLines
) -> None:
    positions = await open_many(store, 6 * SLICE)  # six slices, each a Redis round trip and a yield
    await set_feed(redis, settings, clock, live=True)
    monitor = make_monitor()
    await monitor.sweep_once()  # the tick path now watches every position
    target = positions[-1]
    notice = tick_notice(clock.now(), [Tick(target.symbol, target.instrument_key, "850.00")])
    sweeping = asyncio.create_task(monitor.sweep_once())
    for _ in range(5):  # into the sweep (its first reads take at least this many turns), far from its end
        await asyncio.sleep(0)
    assert not sweeping.done()
    assert monitor.on_notice(notice) == 1  # decided here, as the pub/sub listener would in its own turn
    assert not sweeping.done()
    await sweeping
    await monitor.drain(timeout_s=5)
    assert logs.count(f"{target.symbol}: Price ₹850.00 <= SL ₹900.00") == 1  # decided once, closed once
    assert logs.count(f"Position closed successfully: {target.symbol}") == 1


EXPIRY_DAY = datetime(2026, 12, 8, 14, 50, tzinfo=IST).timestamp()  # a Tuesday: the NIFTY weekly expires


async def test_the_expiry_check_yields_between_chunks_and_reports_in_symbol_order(redis: Redis, logs: LogLines) -> None:
    clock = ManualClock(EXPIRY_DAY)
    listed = load_instruments(now=EXPIRY_DAY, expiry_weekday=1, fno=True)
    expiring = [i for i in listed if expires_on(i, EXPIRY_DAY)][:5]
    assert len(expiring) == 5
    positions = [
        Position(symbol=i.trading_symbol, instrument_key=i.instrument_key, side=Side.LONG, quantity=i.lot_size,
                 entry_price=15_000, stop_loss=5_000, opened_at=EXPIRY_DAY)
        for i in reversed(expiring)
    ]  # fmt: skip
    watch = ExpiryWatch(PositionStore(redis, clock), InstrumentIndex(listed), clock, warn_min=60, chunk=2)
    async with LoopTurns() as turns:
        before = turns.count
        await watch.check(positions)
        assert turns.count - before >= 2  # three chunks: the loop ran between them
    warned = [line.split(" expires today")[0].removeprefix("[WARNING] ") for line in logs.lines("WARNING")]
    assert warned == sorted(i.trading_symbol for i in expiring)


async def test_the_safety_net_keeper_reads_open_positions_in_slices(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore
) -> None:
    positions = await open_many(store, 3 * SLICE)
    broker = UpstoxBroker(settings, clock=clock)
    net = SafetyNet(settings, redis, broker, clock)
    keeper = SafetyNetKeeper(settings, redis, net, store, clock, close_fired=lambda _: None)
    try:
        async with LoopTurns() as turns:
            before = turns.count
            read = await keeper._open_positions()  # what keep_once and check_fired go through
            assert turns.count - before >= 3  # at least one turn per slice went to other tasks
    finally:
        await broker.aclose()
    assert [p.symbol for p, _ in read] == [p.symbol for p in positions]
