"""The broker is the truth: closes against the simulator's positions, partial fills, lost replies, closes made
outside the guard, the reconcile, blocked order calls and retried claim scripts (real Redis, real simulator)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from libs.common import keys
from libs.common.broker import BrokerError, OrdersBlocked, UpstoxBroker
from libs.common.broker_positions import BrokerPositions
from libs.common.clock import SystemClock
from libs.common.closing import Closer, CloseRequest, PartialClose, close_tag
from libs.common.models import CloseReason, CloseRecord, PositionState, PriceSource, Side
from libs.common.order_gate import OrderGate
from libs.common.positions import PositionConflict, PositionStore
from libs.common.settings import Settings
from services.alerts.table import alert_type, facts, render
from services.monitor import Monitor
from services.sim.server import Simulator, running_simulator
from services.sim.settings import SimSettings
from tests.helpers import eventually, free_port
from tests.monitor.conftest import LogLines, compressed, long_bosch, set_feed, write_price
from tests.monitor.test_monitor_sim import held_at_broker, running, sim_orders

pytestmark = pytest.mark.integration
CLOCK = SystemClock()
SL = CloseRequest("BOSCHLTD", CloseReason.STOP_LOSS, "monitor", 69500, PriceSource.LIVE, 0.0)


@pytest.fixture
async def sim(settings: Settings) -> AsyncIterator[Simulator]:
    sim_settings = SimSettings.of(settings, sim_order_rate_limit_per_s=0, sim_tick_interval_s=0.05)
    async with running_simulator(sim_settings, auto_tick=False) as running_sim:
        running_sim.market.set_price("BOSCHLTD", 69500)
        yield running_sim


@pytest.fixture
def bsettings(settings: Settings, sim: Simulator) -> Settings:
    return compressed(
        settings,
        upstox_api_base=sim.rest_url,
        upstox_order_base=sim.rest_url,
        broker="upstox",
        monitor_stuck_close_s=10.0,
        order_blocked_retry_s=0.5,
    )


@pytest.fixture
async def closer(redis: Redis, bsettings: Settings) -> AsyncIterator[Closer]:
    broker = UpstoxBroker(bsettings)
    holdings = BrokerPositions(redis, broker, CLOCK, max_age_s=bsettings.broker_positions_max_age_s)
    store = PositionStore(redis, CLOCK)
    yield Closer(store, broker, CLOCK, holdings=holdings, gate=OrderGate(redis, CLOCK), settings=bsettings)
    await broker.aclose()


def net(sim: Simulator) -> int:
    return sim.orders.positions.net("NSE_EQ|INE323A01026", "I")


async def sold_by_guard(sim: Simulator) -> int:
    return sum(int(o["filled_quantity"]) for o in await sim_orders(sim) if o["transaction_type"] == "SELL")


async def test_partial_fills_are_followed_up_in_the_claim_and_never_sell_more_than_held(
    redis: Redis, sim: Simulator, closer: Closer, settings: Settings
) -> None:
    store = PositionStore(redis, CLOCK)
    held_at_broker(sim, long_bosch(quantity=10))
    await store.open(long_bosch(quantity=10))
    await sim.inject("partial_fill", 30, ratio=0.4)  # 4 of 10, 2 of 6, 1 of 4, 1 of 3: the claim's four orders
    with pytest.raises(PartialClose, match="sold 8 of 10; 2 still held"):
        await closer.close(SL)
    position = await store.get("BOSCHLTD")
    assert position is not None and position.state is PositionState.OPEN and position.quantity == 2
    assert net(sim) == 2 and await sold_by_guard(sim) == 8
    orders = await sim_orders(sim)
    assert len({o["tag"] for o in orders}) == 1, "every follow-up carries the claim's one close tag"
    # The part sold is journaled at once (nothing lost if the rest is closed elsewhere or never).
    (part,) = [r for r in await store.journal() if isinstance(r, CloseRecord)]
    assert (part.quantity, part.remaining, part.closed_by) == (8, 2, "monitor")
    value = sum(int(o["filled_quantity"]) * float(o["average_price"]) for o in orders)
    assert part.exit_price == round(value * 100 / 8)
    assert part.order_id.split(",") == [o["order_id"] for o in orders if int(o["filled_quantity"])]
    # The "reduced" event carries the part sold beside the quantity still held; its alert names what is held.
    (reduced,) = [e for e in await store.recent_events() if e["kind"] == "reduced"]
    assert (reduced["quantity"], reduced["part"]["quantity"]) == (2, 8)
    alert = render(alert_type(reduced), facts(reduced, settings), reduced["at"])
    assert "The broker holds 2 of BOSCHLTD" in alert.body and "protects the 2 held" in alert.body

    sim.faults.clear()
    record = await closer.close(SL)  # the next attempt sells the remainder only
    assert record.quantity == 2 and net(sim) == 0 and await sold_by_guard(sim) == 10
    journal = [r for r in await store.journal() if isinstance(r, CloseRecord)]
    assert [(r.quantity, r.remaining) for r in journal] == [(2, 0), (8, 2)]  # newest first: 10 units in all


async def test_a_reconcile_that_finds_part_sold_journals_that_part_and_guards_the_rest(
    redis: Redis, sim: Simulator, bsettings: Settings, closer: Closer
) -> None:
    store = PositionStore(redis, CLOCK)
    held_at_broker(sim, long_bosch(quantity=10))
    await store.open(long_bosch(quantity=10))
    claim_id, claimed = await store.claim("BOSCHLTD", CloseReason.STOP_LOSS)
    broker = UpstoxBroker(bsettings)  # a closer that sold 4 under the claim's tag, then stopped
    try:
        fill = await broker.close(claimed.model_copy(update={"quantity": 4}), close_tag(claim_id), None)
    finally:
        await broker.aclose()
    assert fill.quantity == 4 and net(sim) == 6

    assert await closer.reconcile(claimed) is None  # not closed: reopened for what the broker still holds
    position = await store.get("BOSCHLTD")
    assert position is not None and position.state is PositionState.OPEN and position.quantity == 6
    (part,) = [r for r in await store.journal() if isinstance(r, CloseRecord)]
    assert (part.quantity, part.remaining, part.closed_by, part.order_id) == (4, 6, "reconcile", fill.order_id)
    assert part.exit_price == fill.price and part.pnl == claimed.model_copy(update={"quantity": 4}).pnl(fill.price)


async def test_a_lost_reply_is_settled_by_tag_with_exactly_one_order(
    redis: Redis, sim: Simulator, closer: Closer
) -> None:
    store = PositionStore(redis, CLOCK)
    held_at_broker(sim, long_bosch())
    await store.open(long_bosch())
    await sim.inject("reply_lost", 30)
    record = await closer.close(SL)
    orders = await sim_orders(sim)
    assert len(orders) == 1 and record.order_id == orders[0]["order_id"] and record.quantity == 39
    assert net(sim) == 0
    assert (await store.get("BOSCHLTD")).state is PositionState.CLOSED  # type: ignore[union-attr]


async def test_closed_in_the_app_then_an_sl_crossing_sends_no_order(
    redis: Redis, sim: Simulator, bsettings: Settings, logs: LogLines
) -> None:
    store = PositionStore(redis, CLOCK)
    held_at_broker(sim, long_bosch())
    await store.open(long_bosch())
    assert sim.orders.trade("BOSCHLTD", "sell", 39).status == "complete"  # the person closes it in the app
    await write_price(redis, bsettings, "BOSCHLTD", "735.00", CLOCK.now())
    await set_feed(redis, bsettings, CLOCK, live=True)
    broker = UpstoxBroker(bsettings)
    monitor = Monitor(bsettings.model_copy(update={"reconcile_interval_s": 60}), redis, broker, CLOCK)
    async with running(monitor):
        await eventually(lambda: "BOSCHLTD" in monitor.watched or _closed(store), timeout_s=5)
        await write_price(redis, bsettings, "BOSCHLTD", "695.00", CLOCK.now(), publish=True)
        await eventually(lambda: _closed(store), timeout_s=5)
    await broker.aclose()
    assert await sim_orders(sim) == [] and net(sim) == 0
    (record,) = [r for r in await store.journal() if isinstance(r, CloseRecord)]
    assert record.closed_by == "external" and record.order_id == ""
    assert any("closed outside the guard" in line for line in logs.lines("WARNING"))
    closed = [e for e in await store.recent_events() if e["kind"] == "closed"]
    assert closed[0]["record"]["closed_by"] == "external"


async def _is_open(store: PositionStore) -> bool:
    position = await store.get("BOSCHLTD")
    return position is not None and position.state is PositionState.OPEN


async def _closed(store: PositionStore) -> bool:
    position = await store.get("BOSCHLTD")
    return position is not None and position.state is PositionState.CLOSED


async def test_a_position_reduced_outside_the_guard_sells_only_the_remainder(
    redis: Redis, sim: Simulator, closer: Closer
) -> None:
    store = PositionStore(redis, CLOCK)
    held_at_broker(sim, long_bosch())
    await store.open(long_bosch())
    sim.orders.trade("BOSCHLTD", "sell", 15)  # the bot took part of it off
    record = await closer.close(SL)
    assert record.quantity == 24 and net(sim) == 0
    assert [o["quantity"] for o in await sim_orders(sim)] == [24]


async def test_the_reconcile_closes_flat_reduces_smaller_and_reports_unguarded(
    redis: Redis, sim: Simulator, bsettings: Settings, logs: LogLines
) -> None:
    store = PositionStore(redis, CLOCK)
    held_at_broker(sim, long_bosch(), long_bosch(symbol="KAYNES", instrument_key="NSE_EQ|INE918Z01012", quantity=5))
    sim.orders.trade("RELIANCE", "buy", 3)  # held, never registered
    await store.open(long_bosch())
    await store.open(long_bosch(symbol="KAYNES", instrument_key="NSE_EQ|INE918Z01012", quantity=5))
    sim.orders.trade("BOSCHLTD", "sell", 30)  # 9 left of 39
    sim.orders.trade("KAYNES", "sell", 5)  # flat
    broker = UpstoxBroker(bsettings)
    monitor = Monitor(bsettings, redis, broker, CLOCK)
    counts = await monitor.reconciler.once()
    await broker.aclose()
    assert counts == {"closed_external": 1, "reduced": 1, "unguarded": 1}
    assert (await store.get("BOSCHLTD")).quantity == 9  # type: ignore[union-attr]
    assert (await store.get("KAYNES")).state is PositionState.CLOSED  # type: ignore[union-attr]
    unguarded = (await redis.get(keys.BROKER_UNGUARDED)) or ""
    assert '"symbol": "RELIANCE"' in unguarded and '"quantity": 3' in unguarded
    assert any("the broker holds 9 of the 39 guarded" in line for line in logs.lines("WARNING"))
    assert any("Broker positions with no guard" in line and "RELIANCE 3 (I)" in line for line in logs.lines("WARNING"))
    assert await sim_orders(sim) == []


async def test_blocked_order_calls_retry_slowly_show_why_and_close_once_lifted(
    redis: Redis, sim: Simulator, bsettings: Settings, logs: LogLines
) -> None:
    store = PositionStore(redis, CLOCK)
    held_at_broker(sim, long_bosch())
    await store.open(long_bosch())
    await write_price(redis, bsettings, "BOSCHLTD", "695.00", CLOCK.now())
    await set_feed(redis, bsettings, CLOCK, live=True)
    await sim.inject("ip_block", 2.0)
    broker = UpstoxBroker(bsettings)
    monitor = Monitor(bsettings, redis, broker, CLOCK)  # ORDER_BLOCKED_RETRY_S=0.5, sweeps every 0.05 s
    async with running(monitor):
        blocked: dict[str, Any] = await eventually(OrderGate(redis, CLOCK).state, timeout_s=5)
        assert "UDAPI1154" in blocked["reason"] and "static IP" in blocked["reason"]
        await eventually(lambda: _is_open(store), timeout_s=5)  # between its slow retries, back to open
        await eventually(lambda: _closed(store), timeout_s=5)
    await broker.aclose()
    # 2 s blocked at one try per 0.5 s: a handful of calls, not a storm (the sweep runs 40 times meanwhile)
    assert 2 <= sim.blocked_order_calls <= 6
    assert logs.count("Order calls are blocked by the broker") == 1
    assert len(await sim_orders(sim)) == 1 and net(sim) == 0
    assert await OrderGate(redis, CLOCK).state() == {}
    assert logs.count("Order calls are accepted again") == 1
    kinds = [e["kind"] for e in await store.recent_events(100) if e["kind"].startswith("orders_")]
    assert kinds == ["orders_unblocked", "orders_blocked"]  # newest first: one of each, for the alerts


async def test_a_blocked_close_raises_orders_blocked_and_reopens(redis: Redis, sim: Simulator, closer: Closer) -> None:
    store = PositionStore(redis, CLOCK)
    held_at_broker(sim, long_bosch())
    await store.open(long_bosch())
    await sim.inject("ip_block", 30)
    with pytest.raises(OrdersBlocked):
        await closer.close(SL)
    position = await store.get("BOSCHLTD")
    assert position is not None and position.state is PositionState.OPEN and position.next_attempt_at is not None
    assert position.next_attempt_at - CLOCK.now() == pytest.approx(0.5, abs=0.3)


async def test_a_retried_claim_script_holds_the_claim(redis: Redis) -> None:
    store = PositionStore(redis, CLOCK)
    await store.open(long_bosch())
    first, _ = await store.claim("BOSCHLTD", CloseReason.STOP_LOSS, "c0ffee0000000001")
    again, position = await store.claim("BOSCHLTD", CloseReason.STOP_LOSS, "c0ffee0000000001")  # redis-py's resend
    assert first == again == position.claim_id and position.state is PositionState.CLOSING
    record = CloseRecord(
        symbol="BOSCHLTD", instrument_key=position.instrument_key, side=position.side, quantity=39,
        entry_price=73500, exit_price=69500, pnl=position.pnl(69500), reason=CloseReason.STOP_LOSS,
        closed_at=CLOCK.now(), order_id="1", price_source=PriceSource.LIVE, price_age_s=0.0, closed_by="monitor",
    )  # fmt: skip
    assert await store.complete(first, record) and await store.complete(first, record)
    assert await redis.llen(keys.CLOSED_JOURNAL) == 1
    assert not await store.complete("someone-else", record)


async def test_a_retried_release_answers_as_the_first(redis: Redis) -> None:
    store = PositionStore(redis, CLOCK)
    await store.open(long_bosch())
    claim_id, _ = await store.claim("BOSCHLTD", CloseReason.STOP_LOSS)
    sold = CloseRecord(
        symbol="BOSCHLTD", instrument_key="NSE_EQ|INE323A01026", side=Side.LONG, quantity=30, entry_price=70000,
        exit_price=69500, pnl=-15000, reason=CloseReason.STOP_LOSS, closed_at=1.0, order_id="1",
        price_source=PriceSource.LIVE, price_age_s=0.0, closed_by="monitor", remaining=9,
    )  # fmt: skip
    assert await store.release("BOSCHLTD", claim_id, "down", None, quantity=9, sold=sold)
    assert await store.release("BOSCHLTD", claim_id, "down", None, quantity=9, sold=sold)
    position = await store.get("BOSCHLTD")
    assert position is not None and position.state is PositionState.OPEN and position.close_attempts == 1
    assert position.quantity == 9 and await store.journal() == [sold]  # the sold part journaled once


@pytest.mark.parametrize("dns_down_later", [False, True])
async def test_the_broker_path_resolves_through_the_dns_fallback_over_verified_tls(
    redis: Redis, settings: Settings, dns_down_later: bool
) -> None:
    """The system resolver can never resolve these hosts; the DNS server on loopback can. With `dns_down_later`
    that server is gone by the time of the close: the addresses remembered at the reconcile's start serve."""
    host, order_host = "api.upstox.invalid", "api-hft.upstox.invalid"
    tls = {"sim_tls": True, "sim_dns_port": free_port(), "sim_order_rate_limit_per_s": 0, "sim_hostnames": [order_host]}
    sim_settings = SimSettings.of(settings, **tls)
    async with running_simulator(sim_settings, auto_tick=False) as tls_sim:
        tls_sim.market.set_price("BOSCHLTD", 69500)
        held_at_broker(tls_sim, long_bosch())
        bsettings = compressed(
            settings,
            upstox_api_base=f"https://{host}:{tls_sim.rest_port}",
            upstox_order_base=f"https://{order_host}:{tls_sim.rest_port}",
            tls_ca_file=str(tls_sim.ca_path),
            dns_fallback_servers=["127.0.0.1"],
            dns_port=tls_sim.dns_port,
            dns_timeout_s=0.5,
            monitor_stuck_close_s=10.0,
        )
        broker = UpstoxBroker(bsettings)
        if dns_down_later:
            await broker.remember_hosts()
            assert tls_sim.dns is not None
            tls_sim.dns.stop()
        store = PositionStore(redis, CLOCK)
        await store.open(long_bosch())
        holdings = BrokerPositions(redis, broker, CLOCK, max_age_s=10)
        record = await Closer(store, broker, CLOCK, holdings=holdings, settings=bsettings).close(SL)
        await broker.aclose()
        assert record.quantity == 39 and record.closed_by == "monitor"
        assert tls_sim.orders.positions.net("NSE_EQ|INE323A01026", "I") == 0


@pytest.mark.parametrize(("algo_name", "closes"), [("my-algo", True), ("", False)])
async def test_the_algo_name_goes_with_every_order_call(
    redis: Redis, settings: Settings, algo_name: str, closes: bool
) -> None:
    sim_settings = SimSettings.of(settings, sim_require_algo_name="my-algo", sim_order_rate_limit_per_s=0)
    async with running_simulator(sim_settings, auto_tick=False) as named_sim:
        named_sim.market.set_price("BOSCHLTD", 69500)
        held_at_broker(named_sim, long_bosch())
        bsettings = compressed(
            settings,
            upstox_api_base=named_sim.rest_url,
            upstox_order_base=named_sim.rest_url,
            upstox_algo_name=algo_name,
            monitor_stuck_close_s=10.0,
        )
        broker = UpstoxBroker(bsettings)
        store = PositionStore(redis, CLOCK)
        await store.open(long_bosch())
        closer = Closer(store, broker, CLOCK, settings=bsettings)
        if closes:
            assert (await closer.close(SL)).quantity == 39
        else:
            with pytest.raises(BrokerError, match="UDAPI1156"):
                await closer.close(SL)
            assert (await store.get("BOSCHLTD")).state is PositionState.OPEN  # type: ignore[union-attr]
        await broker.aclose()


async def test_a_slow_fill_is_waited_for_with_one_order(redis: Redis, sim: Simulator, closer: Closer) -> None:
    store = PositionStore(redis, CLOCK)
    held_at_broker(sim, long_bosch())
    await store.open(long_bosch())
    await sim.inject("slow_fill", 30, delay_s=0.8)
    record = await closer.close(SL)
    (order,) = await sim_orders(sim)
    assert order["status"] == "complete" and record.order_id == order["order_id"] and net(sim) == 0


async def test_a_rejected_close_reopens_with_the_reason_and_no_fill(
    redis: Redis, sim: Simulator, closer: Closer
) -> None:
    store = PositionStore(redis, CLOCK)
    held_at_broker(sim, long_bosch())
    await store.open(long_bosch())
    await sim.inject("reject", 30, message="Insufficient funds")
    with pytest.raises(BrokerError, match="Insufficient funds"):
        await closer.close(SL)
    position = await store.get("BOSCHLTD")
    assert position is not None and position.state is PositionState.OPEN and position.quantity == 39
    assert "Insufficient funds" in position.last_error and net(sim) == 39


async def test_reconcile_adopts_unguarded_positions_only_when_asked(
    redis: Redis, sim: Simulator, bsettings: Settings
) -> None:
    sim.market.set_price("KAYNES", 20000)
    sim.orders.trade("KAYNES", "sell", 5)  # a short nobody registered
    store = PositionStore(redis, CLOCK)
    broker = UpstoxBroker(bsettings)
    assert (await Monitor(bsettings, redis, broker, CLOCK).reconciler.once())["unguarded"] == 1
    assert await store.get("KAYNES") is None
    adopting = bsettings.model_copy(update={"reconcile_adopt": True})
    counts = await Monitor(adopting, redis, broker, CLOCK).reconciler.once()
    await broker.aclose()
    assert counts == {"closed_external": 0, "reduced": 0, "unguarded": 0, "adopted": 1}
    position = await store.get("KAYNES")
    assert position is not None and (position.side.value, position.quantity) == ("short", 5)
    assert (position.entry_price, position.stop_loss, position.take_profit) == (20000, 20400, 19200)


async def test_a_burst_of_closes_is_paced_under_the_order_rate_limit(redis: Redis, settings: Settings) -> None:
    symbols = [f"SIMEQ{i:03d}" for i in range(1, 16)]
    limited = SimSettings.of(settings, sim_order_rate_limit_per_s=10)
    async with running_simulator(limited, auto_tick=False) as paced_sim:
        bsettings = compressed(
            settings, upstox_api_base=paced_sim.rest_url, upstox_order_base=paced_sim.rest_url, monitor_stuck_close_s=60
        )
        store = PositionStore(redis, CLOCK)
        for symbol in symbols:
            key = f"NSE_EQ|{symbol}"
            paced_sim.orders.trade(symbol, "buy", 1)
            await store.open(
                long_bosch(symbol=symbol, instrument_key=key, quantity=1, stop_loss=None, take_profit=None)
            )
        broker = UpstoxBroker(bsettings)
        closer = Closer(store, broker, CLOCK, settings=bsettings)
        requests = [CloseRequest(s, CloseReason.EMERGENCY, "api", None, PriceSource.BROKER, None) for s in symbols]
        records = await asyncio.gather(*(closer.close(r) for r in requests))
        await broker.aclose()
        assert len(records) == 15 and all(r.quantity == 1 for r in records)  # none refused with a 429
        assert sum(1 for o in paced_sim.orders.orders.values() if o.tag) == 15


async def test_a_resent_open_answers_as_the_first_and_another_open_is_refused(redis: Redis) -> None:
    store = PositionStore(redis, CLOCK)
    position = long_bosch(opened_at=CLOCK.now())
    await store.open(position)
    await store.open(position)  # redis-py resending the script whose reply was lost
    with pytest.raises(PositionConflict, match="is open"):
        await store.open(long_bosch(opened_at=CLOCK.now() + 1))
