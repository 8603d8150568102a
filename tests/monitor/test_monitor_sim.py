"""The monitor's whole loop (`run()`) on the real clock, closing through the simulator's Upstox REST broker."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from libs.common import keys
from libs.common.broker import Fill, UpstoxBroker
from libs.common.clock import SystemClock
from libs.common.closing import TAG_PREFIX, Closer, CloseRequest
from libs.common.models import CloseReason, CloseRecord, Position, PositionState, PriceSource, Side
from libs.common.money import Paise
from libs.common.positions import PositionConflict, PositionNotFound, PositionStore
from libs.common.redis_client import create_redis
from libs.common.service import cancel_and_wait
from libs.common.settings import Settings
from services.monitor import Monitor
from services.sim.server import Simulator, running_simulator
from services.sim.settings import SimSettings
from tests.helpers import eventually, redis_server
from tests.monitor.conftest import (
    LogLines,
    ScriptedBroker,
    compressed,
    feed_beating,
    long_bosch,
    set_feed,
    short_reliance,
    write_price,
)
from tests.races import released_together

pytestmark = pytest.mark.integration
CLOCK = SystemClock()


@pytest.fixture
async def sim(settings: Settings) -> AsyncIterator[Simulator]:
    sim_settings = SimSettings.of(settings, sim_order_rate_limit_per_s=0, sim_tick_interval_s=0.05)
    async with running_simulator(sim_settings, auto_tick=False) as running:
        yield running


@pytest.fixture
def msettings(settings: Settings, sim: Simulator) -> Settings:
    """Monitor settings: compressed time, orders to the simulator over REST (no token = simulator mode)."""
    return compressed(settings, upstox_api_base=sim.rest_url, upstox_order_base=sim.rest_url, broker="upstox")


def held_at_broker(sim: Simulator, *positions: Position) -> None:
    """The entries the bot placed: the broker holds each position before the guard is told about it."""
    for position in positions:
        side = "buy" if position.side is Side.LONG else "sell"
        assert sim.orders.trade(position.symbol, side, position.quantity).status == "complete"


async def sim_orders(sim: Simulator) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=sim.rest_url, timeout=5) as client:
        response = await client.get("/sim/orders")
        response.raise_for_status()
        return [o for o in response.json() if str(o.get("tag") or "").startswith(TAG_PREFIX)]


@contextlib.asynccontextmanager
async def running(monitor: Monitor, drain_s: float = 2.0) -> AsyncIterator[asyncio.Task[None]]:
    """`monitor.run()` as a task; stopped on exit. `drain_s`: its broker timeout, for which a stop waits on closes."""
    task = asyncio.create_task(monitor.run())
    try:
        yield task
    finally:
        # Re-cancelled until it ends (on Python 3.11 a cancel can be swallowed inside redis-py: a blocked test),
        # but only after the drain had its time, so no close is left running behind the "kill".
        await cancel_and_wait([task], grace_s=drain_s + 5)
        assert task.done(), "the monitor did not stop"
        with contextlib.suppress(asyncio.CancelledError):
            await task  # re-raises a crash of the monitor


async def state_of(store: PositionStore, symbol: str) -> PositionState | None:
    position = await store.get(symbol)
    return position.state if position else None


async def test_live_ticks_close_long_and_short_through_the_simulator(
    redis: Redis, msettings: Settings, sim: Simulator, logs: LogLines
) -> None:
    store = PositionStore(redis, CLOCK)
    held_at_broker(sim, long_bosch(), short_reliance())
    await store.open(long_bosch())
    await store.open(short_reliance())
    await write_price(redis, msettings, "BOSCHLTD", "735.00", CLOCK.now())
    await write_price(redis, msettings, "RELIANCE", "1400.00", CLOCK.now())
    broker = UpstoxBroker(msettings)
    monitor = Monitor(msettings, redis, broker, CLOCK)
    async with feed_beating(redis, msettings, CLOCK), running(monitor):
        await eventually(lambda: set(monitor.watched) == {"BOSCHLTD", "RELIANCE"}, timeout_s=5)
        await eventually(lambda: logs.count("Tick channel") + monitor.sweeps > 1, timeout_s=5)
        sim.market.set_price("BOSCHLTD", 69500)
        sim.market.set_price("RELIANCE", 134000)
        await write_price(redis, msettings, "BOSCHLTD", "695.00", CLOCK.now(), publish=True)
        await write_price(redis, msettings, "RELIANCE", "1340.00", CLOCK.now(), publish=True)
        for symbol in ("BOSCHLTD", "RELIANCE"):
            await eventually(lambda s=symbol: _is_closed(store, s), timeout_s=5)  # type: ignore[misc]
    await broker.aclose()
    orders = {o["trading_symbol"]: o for o in await sim_orders(sim)}
    assert {s: (o["transaction_type"], o["status"], o["quantity"]) for s, o in orders.items()} == {
        "BOSCHLTD": ("SELL", "complete", 39),
        "RELIANCE": ("BUY", "complete", 10),
    }
    records = {r.symbol: r for r in await store.journal() if isinstance(r, CloseRecord)}
    assert records["BOSCHLTD"].exit_price == 69500
    assert records["BOSCHLTD"].pnl == (69500 - 73500) * 39
    assert records["RELIANCE"].pnl == (140000 - 134000) * 10
    assert {r.order_id for r in records.values()} == {o["order_id"] for o in orders.values()}
    assert all(r.price_source is PriceSource.LIVE for r in records.values())
    assert "[SL] BOSCHLTD: Price ₹695.00 <= SL ₹698.25" in logs.lines("SL")
    assert "[TP] RELIANCE: Price ₹1340.00 <= TP ₹1350.00" in logs.lines("TP")
    assert logs.count("Position closed successfully: BOSCHLTD") == 1


async def _is_closed(store: PositionStore, symbol: str) -> bool:
    return await state_of(store, symbol) is PositionState.CLOSED


async def test_a_hundred_racing_closes_from_monitors_and_the_api_send_one_order(
    redis: Redis, msettings: Settings, sim: Simulator
) -> None:
    store = PositionStore(redis, CLOCK)
    held_at_broker(sim, long_bosch())
    await store.open(long_bosch())
    await write_price(redis, msettings, "BOSCHLTD", "575.00", CLOCK.now() - 45)
    await set_feed(redis, msettings, CLOCK, live=False)
    sim.market.set_price("BOSCHLTD", 57500)
    request = CloseRequest("BOSCHLTD", CloseReason.EMERGENCY, "api", 57500, PriceSource.STALE, 45.0)
    broker = UpstoxBroker(msettings)
    clients = [create_redis(msettings) for _ in range(100)]  # separate connections, warmed below
    monitors = [Monitor(msettings, client, broker, CLOCK) for client in clients[:50]]
    apis = [Closer(PositionStore(client, CLOCK), broker, CLOCK) for client in clients[50:]]
    for monitor in monitors:
        assert await monitor.feed_live() is False
    for api in apis:
        with contextlib.suppress(PositionNotFound):
            await api.close(dataclasses.replace(request, symbol="WARMUP"))  # connects, loads the claim script
    results = await released_together(
        [*(m.sweep_once for m in monitors), *(lambda a=a: a.close(request) for a in apis)]
    )
    for monitor in monitors:
        await monitor.drain(timeout_s=5)
    await broker.aclose()
    for client in clients:
        await client.aclose()
    assert not [r for r in results if isinstance(r, Exception) and not isinstance(r, PositionConflict)]
    assert len(await sim_orders(sim)) == 1
    assert await redis.llen(keys.CLOSED_JOURNAL) == 1
    assert await state_of(store, "BOSCHLTD") is PositionState.CLOSED


class HangsBeforeSending(UpstoxBroker):
    async def close(self, position: Position, tag: str, decision_price: Paise | None) -> Fill:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


@pytest.mark.parametrize("order_sent", [True, False])
async def test_killed_between_claim_and_result_is_reconciled_on_restart(
    redis: Redis, msettings: Settings, sim: Simulator, logs: LogLines, order_sent: bool
) -> None:
    store = PositionStore(redis, CLOCK)
    held_at_broker(sim, long_bosch())
    await store.open(long_bosch())
    await write_price(redis, msettings, "BOSCHLTD", "575.00", CLOCK.now() - 45)
    await set_feed(redis, msettings, CLOCK, live=False)
    sim.market.set_price("BOSCHLTD", 57500)
    if order_sent:  # the broker fills the order at once and holds its answer: the monitor dies waiting for it
        await sim.inject("reply_delay", 60, delay_s=60)
    # the broker call outlives the monitor's drain, so the stop cuts the close short as a kill would
    long_wait = msettings.model_copy(update={"broker_timeout_s": 90.0})
    dying = UpstoxBroker(long_wait) if order_sent else HangsBeforeSending(msettings)
    drain_s = 2.0 if order_sent else 0.2
    # a stuck threshold past the test: the dying monitor's own reconcile must not settle the close before the "kill"
    dying_settings = msettings.model_copy(update={"broker_timeout_s": drain_s, "monitor_stuck_close_s": 120.0})
    first = Monitor(dying_settings, redis, dying, CLOCK)
    async with running(first, drain_s):
        await eventually(lambda: _state_is(store, PositionState.CLOSING), timeout_s=5)
        if order_sent:
            await eventually(lambda: _orders_count(sim, 1), timeout_s=5)
    assert await state_of(store, "BOSCHLTD") is PositionState.CLOSING  # the "kill" left it mid-close
    await dying.aclose()
    await sim.inject("reply_delay", 0)

    broker = UpstoxBroker(msettings)
    second = Monitor(msettings, redis, broker, CLOCK)
    async with running(second):
        await eventually(lambda: _is_closed(store, "BOSCHLTD"), timeout_s=5)
    await broker.aclose()
    orders = await sim_orders(sim)
    assert len(orders) == 1
    journal = [r for r in await store.journal() if isinstance(r, CloseRecord)]
    assert [r.order_id for r in journal] == [orders[0]["order_id"]]
    if order_sent:
        assert journal[0].closed_by == "reconcile"
        assert logs.count("Reconciled BOSCHLTD: the broker had filled its close") == 1
    else:
        assert journal[0].closed_by == "monitor"
        assert logs.count("Reconciled BOSCHLTD: no filled order carries its close tag; position reopened") == 1


async def _state_is(store: PositionStore, state: PositionState) -> bool:
    return await state_of(store, "BOSCHLTD") is state


async def _orders_count(sim: Simulator, n: int) -> bool:
    return len(await sim_orders(sim)) == n


async def test_a_close_stuck_in_closing_elsewhere_is_reconciled_while_running(
    redis: Redis, msettings: Settings, sim: Simulator, logs: LogLines
) -> None:
    store = PositionStore(redis, CLOCK)
    held_at_broker(sim, long_bosch())
    await store.open(long_bosch())
    await write_price(redis, msettings, "BOSCHLTD", "720.00", CLOCK.now())
    await set_feed(redis, msettings, CLOCK, live=True)
    broker = UpstoxBroker(msettings)
    monitor = Monitor(msettings, redis, broker, CLOCK)
    async with running(monitor):
        await eventually(lambda: "BOSCHLTD" in monitor.watched, timeout_s=5)
        await store.claim("BOSCHLTD", CloseReason.EMERGENCY)  # an api process claims it, then dies
        await eventually(lambda: logs.count("Reconciled BOSCHLTD: no filled order") == 1, timeout_s=5)
        await eventually(lambda: _state_is(store, PositionState.OPEN), timeout_s=5)
    await broker.aclose()
    assert await sim_orders(sim) == []


async def test_example_2_on_the_real_clock_expiry_warned_once(redis: Redis, settings: Settings, logs: LogLines) -> None:
    msettings = compressed(settings, price_stale_after_s=0.3, price_cache_ttl_s=1, monitor_fallback_log_interval_s=0.2)
    store = PositionStore(redis, CLOCK)
    await store.open(long_bosch())
    monitor = Monitor(msettings, redis, UpstoxBroker(msettings), CLOCK)
    # Built before the price is written: the cached phase lasts 0.3 s, and building takes a good part of it
    # on a loaded machine (the instrument lists), so the first sweep saw the price already stale.
    await set_feed(redis, msettings, CLOCK, live=False)
    await write_price(redis, msettings, "BOSCHLTD", "720.00", CLOCK.now())
    async with running(monitor):
        await eventually(lambda: logs.count("Can't monitor BOSCHLTD - no fresh prices") == 1, timeout_s=5)
        assert await redis.exists(keys.price("BOSCHLTD")) == 0  # Redis expired the key itself
        seen = monitor.sweeps
        await eventually(lambda: monitor.sweeps >= seen + 10, timeout_s=5)
    assert logs.count("Can't monitor BOSCHLTD") == 1
    fallback = logs.lines("FALLBACK")
    assert fallback[0] == "[FALLBACK] Using cached price for BOSCHLTD: ₹720.00 (0s old)"
    assert any(line.startswith("[FALLBACK] Using stale price for BOSCHLTD: ₹720.00") for line in fallback)
    assert fallback[-1] == "[FALLBACK] Price cache expired for BOSCHLTD"
    assert [e["kind"] for e in await store.recent_events() if e["kind"] == "unmonitored"] == ["unmonitored"]


async def test_after_a_pubsub_disconnect_it_resubscribes_rereads_and_still_acts_on_ticks(
    redis: Redis, settings: Settings, logs: LogLines
) -> None:
    # Only the resubscribe can trigger a sweep. The claim fence (half of MONITOR_STUCK_CLOSE_S) gets room for a loaded
    # machine: at the compressed 0.5 s a claim 0.25 s old on 2 busy cores is fenced (rightly: no order, left to a
    # reconcile that a 30 s sweep does not reach in time), which is not what this test is about.
    msettings = compressed(settings, monitor_sweep_interval_s=30.0, monitor_stuck_close_s=10.0)
    store = PositionStore(redis, CLOCK)
    await set_feed(redis, msettings, CLOCK, live=True)
    await store.open(long_bosch())
    await write_price(redis, msettings, "BOSCHLTD", "720.00", CLOCK.now())
    broker = ScriptedBroker()
    monitor = Monitor(msettings, redis, broker, CLOCK)
    async with running(monitor):
        await eventually(lambda: "BOSCHLTD" in monitor.watched, timeout_s=5)
        await eventually(_has_pubsub_client(redis), timeout_s=5)
        sweeps = monitor.sweeps
        await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await eventually(lambda: monitor.sweeps > sweeps, timeout_s=5)
        await eventually(_has_pubsub_client(redis), timeout_s=5)
        await write_price(redis, msettings, "BOSCHLTD", "690.00", CLOCK.now(), publish=True)
        await eventually(lambda: _is_closed(store, "BOSCHLTD"), timeout_s=5)
    assert logs.count("Tick channel resubscribed; re-reading positions and prices") >= 1
    assert broker.orders == 1


def _has_pubsub_client(redis: Redis) -> Any:
    async def check() -> bool:
        numsub = await redis.pubsub_numsub(keys.TICKS_CHANNEL)
        return bool(numsub and numsub[0][1] >= 1)

    return check


async def test_a_redis_outage_is_reported_once_and_the_monitor_recovers(settings: Settings, logs: LogLines) -> None:
    with redis_server() as server:
        msettings = compressed(
            settings, redis_url=server.url, redis_connect_timeout_s=0.2, redis_socket_timeout_s=0.5, redis_retries=1
        )
        redis = create_redis(msettings)
        broker = ScriptedBroker()
        monitor = Monitor(msettings, redis, broker, CLOCK)
        async with running(monitor):
            await eventually(lambda: monitor.sweeps > 2, timeout_s=5)
            server.stop()
            await eventually(lambda: logs.count("Redis unavailable") == 1, timeout_s=10)
            await asyncio.sleep(0.5)  # a few failed sweeps' worth: the outage is still reported once
            assert logs.count("Redis unavailable") == 1
            server.start()
            await eventually(lambda: logs.count("Redis connection restored; monitoring resumed") == 1, timeout_s=10)
            store = PositionStore(redis, CLOCK)
            await set_feed(redis, msettings, CLOCK, live=False)
            await store.open(long_bosch())
            await write_price(redis, msettings, "BOSCHLTD", "690.00", CLOCK.now() - 2)
            await eventually(lambda: _is_closed(store, "BOSCHLTD"), timeout_s=5)
            await eventually(lambda: redis.exists(keys.heartbeat("monitor")), timeout_s=5)
        await redis.aclose()
    assert logs.count("Redis unavailable") == 1
    assert broker.orders == 1
