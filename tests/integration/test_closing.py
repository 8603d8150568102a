from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from libs.common import keys
from libs.common.broker import BrokerError, Fill, PaperBroker
from libs.common.clock import SystemClock
from libs.common.closing import Closer, CloseRequest, close_tag
from libs.common.models import CloseReason, CloseRecord, Position, PositionState, PriceSource, Side
from libs.common.positions import PositionConflict, PositionNotFound, PositionStore
from libs.common.settings import Settings
from tests.races import race_closes

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


async def test_a_close_asks_the_feed_to_unsubscribe_once_even_when_completed_twice(redis: Redis) -> None:
    """The complete script publishes `unsub SYMBOL` with the state change; a retried completion publishes nothing."""
    store = PositionStore(redis, SystemClock())
    await store.open(bosch())
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(keys.SUBSCRIPTION_REQUESTS_CHANNEL)
    try:
        record = await Closer(store, PaperBroker(), SystemClock()).close(request())
        closed = await store.get("BOSCHLTD")
        assert closed is not None and closed.state is PositionState.CLOSED
        assert await store.complete(closed.claim_id or "", record)  # a retried call answers as the first did
        heard = []
        deadline = asyncio.get_running_loop().time() + 0.5
        while asyncio.get_running_loop().time() < deadline:  # None also stands for a skipped subscribe reply
            if (message := await pubsub.get_message(timeout=0.1)) is not None:
                heard.append(message["data"])
        assert heard == ["unsub BOSCHLTD"]
        assert await redis.hget(keys.FEED_SUBSCRIPTIONS, "BOSCHLTD") is None
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


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


async def test_a_hundred_racing_closes_send_one_order(settings: Settings) -> None:
    """100 closers on warmed, separate connections, released together: one claim, one order, 99 conflicts."""
    result = await race_closes(settings, contenders=100)
    assert (result.claims, result.orders, result.closed, result.conflicts, result.errors, result.journal) == (
        1, 1, 1, 99, [], 1
    )  # fmt: skip


async def test_racing_closes_across_processes_send_one_order(settings: Settings) -> None:
    """The monitor and the api are separate processes: 4 processes x 25 closers, released by one barrier."""
    result = await race_closes(settings, contenders=100, processes=4)
    assert (result.claims, result.orders, result.closed, result.conflicts, result.errors, result.journal) == (
        1, 1, 1, 99, [], 1
    )  # fmt: skip


@pytest.mark.parametrize("processes", [1, 4])
async def test_the_race_catches_a_check_then_set_claim(settings: Settings, processes: int) -> None:
    """The same races with a claim made of a read then a write: more than one order reaches the broker."""
    result = await race_closes(settings, contenders=100, processes=processes, check_then_set=True)
    assert result.claims > 1 and result.orders > 1


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


async def test_a_stale_claim_can_neither_finish_nor_reopen_the_next_claim(redis: Redis) -> None:
    """A closer whose claim was settled (reopened) and claimed again by another must not touch the new claim."""
    store = PositionStore(redis, SystemClock())
    await store.open(bosch())
    stale_id, position = await store.claim("BOSCHLTD", CloseReason.STOP_LOSS)
    assert await store.release("BOSCHLTD", stale_id, "reconciled: no order", None)
    current_id, _ = await store.claim("BOSCHLTD", CloseReason.EMERGENCY)
    record = CloseRecord(
        symbol="BOSCHLTD", instrument_key=position.instrument_key, side=position.side, quantity=position.quantity,
        entry_price=position.entry_price, exit_price=57500, pnl=position.pnl(57500), reason=CloseReason.STOP_LOSS,
        closed_at=2.0, order_id="stale-order", price_source=PriceSource.STALE, price_age_s=45.0, closed_by="monitor",
    )  # fmt: skip

    assert not await store.complete(stale_id, record)
    assert not await store.release("BOSCHLTD", stale_id, "late failure of the stale closer", None)
    held = await store.get("BOSCHLTD")
    assert held is not None
    assert (held.state, held.claim_id) == (PositionState.CLOSING, current_id)
    assert await redis.llen(keys.CLOSED_JOURNAL) == 0
    assert await store.complete(current_id, record)
    assert await redis.llen(keys.CLOSED_JOURNAL) == 1


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
