from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from libs.common import keys
from libs.common.broker import BrokerError, Fill, PaperBroker
from libs.common.clock import SystemClock
from libs.common.closing import Closer, CloseRequest, close_tag
from libs.common.models import CloseReason, Position, PositionState, PriceSource, Side
from libs.common.positions import PositionConflict, PositionNotFound, PositionStore

pytestmark = pytest.mark.integration


def bosch() -> Position:
    return Position(
        symbol="BOSCHLTD", instrument_key="NSE_EQ|INE323A01026", side=Side.LONG, quantity=10,
        entry_price=73500, stop_loss=69825, take_profit=None, opened_at=1.0,
    )  # fmt: skip


def request(by: str = "monitor", price: int | None = 57500) -> CloseRequest:
    return CloseRequest("BOSCHLTD", CloseReason.STOP_LOSS, by, price, PriceSource.STALE, 45.0)


class CountingBroker(PaperBroker):
    """A paper broker that counts orders and can be told to fail."""

    def __init__(self, fail: bool = False, delay_s: float = 0.0) -> None:
        super().__init__()
        self.orders = 0
        self.fail = fail
        self.delay_s = delay_s

    async def close(self, position: Position, tag: str, decision_price: int | None) -> Fill:
        self.orders += 1
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise BrokerError("broker answered 503 (UDAPI100500: down)", status_code=503)
        return await super().close(position, tag, decision_price)


async def test_open_registers_the_position_and_asks_for_a_subscription(redis: Redis) -> None:
    store = PositionStore(redis, SystemClock())
    await store.open(bosch())
    assert await store.open_symbols() == ["BOSCHLTD"]
    assert await redis.hget(keys.FEED_SUBSCRIPTIONS, "BOSCHLTD") == "NSE_EQ|INE323A01026"
    assert (await redis.hgetall(keys.position("BOSCHLTD")))["stop_loss"] == "698.25"
    with pytest.raises(PositionConflict):  # another registration (a resend of the same one answers as the first)
        await store.open(bosch().model_copy(update={"opened_at": 2.0}))


async def test_close_journals_and_reports_pnl(redis: Redis) -> None:
    store = PositionStore(redis, SystemClock())
    await store.open(bosch())
    record = await Closer(store, PaperBroker(), SystemClock()).close(request())
    assert record.exit_price == 57500
    assert record.pnl == (57500 - 73500) * 10
    position = await store.get("BOSCHLTD")
    assert position is not None
    assert position.state is PositionState.CLOSED
    assert await store.open_symbols() == []
    journal = await store.journal()
    assert journal == [record]
    kinds = [e["kind"] for e in await store.recent_events()]
    assert kinds[:3] == ["closed", "closing", "opened"]


async def test_a_hundred_racing_closes_send_one_order(redis: Redis) -> None:
    store = PositionStore(redis, SystemClock())
    await store.open(bosch())
    broker = CountingBroker(delay_s=0.05)
    closer = Closer(store, broker, SystemClock())
    results = await asyncio.gather(
        *(closer.close(request("api" if i % 2 else "monitor")) for i in range(100)), return_exceptions=True
    )
    assert broker.orders == 1
    assert sum(1 for r in results if not isinstance(r, Exception)) == 1
    assert all(isinstance(r, PositionConflict) for r in results if isinstance(r, Exception))
    assert await redis.llen(keys.CLOSED_JOURNAL) == 1


async def test_broker_failure_leaves_the_position_open_with_the_reason(redis: Redis) -> None:
    store = PositionStore(redis, SystemClock())
    await store.open(bosch())
    with pytest.raises(BrokerError):
        await Closer(store, CountingBroker(fail=True), SystemClock()).close(request(), retry_at=99.0)
    position = await store.get("BOSCHLTD")
    assert position is not None
    assert position.state is PositionState.OPEN
    assert "503" in position.last_error
    assert position.close_attempts == 1
    assert position.next_attempt_at == 99.0
    assert await store.open_symbols() == ["BOSCHLTD"]
    record = await Closer(store, PaperBroker(), SystemClock()).close(request())
    assert record.order_id


async def test_missing_position_is_not_found(redis: Redis) -> None:
    store = PositionStore(redis, SystemClock())
    with pytest.raises(PositionNotFound):
        await Closer(store, PaperBroker(), SystemClock()).close(request())


async def test_reconcile_finishes_a_filled_close_and_reopens_an_unsent_one(redis: Redis) -> None:
    store = PositionStore(redis, SystemClock())
    broker = PaperBroker()
    closer = Closer(store, broker, SystemClock())
    await store.open(bosch())
    claim_id, _ = await store.claim("BOSCHLTD", CloseReason.STOP_LOSS)  # crashed before sending
    stuck = await store.get("BOSCHLTD")
    assert stuck is not None
    assert await closer.reconcile(stuck) is None
    reopened = await store.get("BOSCHLTD")
    assert reopened is not None
    assert reopened.state is PositionState.OPEN

    claim_id, position = await store.claim("BOSCHLTD", CloseReason.STOP_LOSS)  # crashed after the fill
    await broker.close(position, close_tag(claim_id), 57000)
    stuck = await store.get("BOSCHLTD")
    assert stuck is not None
    record = await closer.reconcile(stuck)
    assert record is not None
    assert record.exit_price == 57000
    closed = await store.get("BOSCHLTD")
    assert closed is not None
    assert closed.state is PositionState.CLOSED


async def test_levels_move_only_while_open(redis: Redis) -> None:
    store = PositionStore(redis, SystemClock())
    await store.open(bosch())
    moved = await store.update_levels("BOSCHLTD", stop_loss=70000, take_profit=80000)
    assert (moved.stop_loss, moved.take_profit) == (70000, 80000)
    with pytest.raises(ValueError, match="stop_loss must be below"):
        await store.update_levels("BOSCHLTD", stop_loss=75000, take_profit=None)
    await store.claim("BOSCHLTD", CloseReason.EMERGENCY)
    with pytest.raises(PositionConflict):
        await store.update_levels("BOSCHLTD", stop_loss=71000, take_profit=None)
