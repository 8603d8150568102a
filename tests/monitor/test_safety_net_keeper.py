"""The safety net's keeper and disarm against the simulator's GTT book over real HTTP and a real Redis.

The simulator and the keeper share a manual clock, so a GTT's day ends when the test says so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from libs.common.broker import UpstoxBroker
from libs.common.clock import ManualClock
from libs.common.closing import Closer, CloseRequest
from libs.common.models import CloseReason, Position, PriceSource, Side
from libs.common.positions import PositionStore
from libs.common.safety_net import NetState, SafetyNet, trigger_for
from libs.common.settings import Settings
from services.monitor.safety_net import SafetyNetKeeper
from services.sim.server import Simulator, running_simulator
from tests.monitor.conftest import compressed, long_bosch

pytestmark = pytest.mark.integration
START = 1_767_000_000.0  # 2025-12-29 14:50 IST, a Monday


@dataclass
class Rig:
    sim: Simulator
    clock: ManualClock
    store: PositionStore
    net: SafetyNet
    keeper: SafetyNetKeeper
    fired: list[str]
    closer: Closer

    async def state(self, symbol: str = "BOSCHLTD") -> NetState:
        return await self.net.state(symbol)

    async def open(self, position: Position) -> None:
        side = "buy" if position.side is Side.LONG else "sell"
        assert self.sim.orders.trade(position.symbol, side, position.quantity).status == "complete"
        await self.store.open(position)


@pytest.fixture
async def rig(settings: Settings, redis: Redis) -> AsyncIterator[Rig]:
    async with rigged(settings, redis, START) as made:
        yield made


@contextlib.asynccontextmanager
async def rigged(settings: Settings, redis: Redis, start: float) -> AsyncIterator[Rig]:
    clock = ManualClock(start)
    sim_settings = settings.model_copy(update={"sim_order_rate_limit_per_s": 0})
    async with running_simulator(sim_settings, clock=clock, auto_tick=False) as sim:
        s = compressed(settings, upstox_api_base=sim.rest_url, upstox_order_base=sim.rest_url)
        sim.market.set_price("BOSCHLTD", 73500)
        broker = UpstoxBroker(s, clock=clock)
        store = PositionStore(redis, clock)
        net = SafetyNet(s, redis, broker, clock)
        fired: list[str] = []
        keeper = SafetyNetKeeper(s, redis, net, store, clock, close_fired=lambda p: fired.append(p.symbol))
        closer = Closer(store, broker, clock, settings=s, safety_net=net)
        try:
            yield Rig(sim, clock, store, net, keeper, fired, closer)
        finally:
            await broker.aclose()


def test_trigger_is_the_stop_moved_out_on_the_tick() -> None:
    assert trigger_for(long_bosch(stop_loss=69825), 0.5, 5) == 69475  # 694.75875 -> down to 694.75
    short = long_bosch(side=Side.SHORT, stop_loss=77000, take_profit=70000)
    assert trigger_for(short, 0.5, 5) == 77385  # 773.85 exactly
    assert trigger_for(short, 0.3, 5) == 77235  # 772.31 -> up to 772.35
    assert trigger_for(long_bosch(stop_loss=None), 0.5, 5) is None


async def test_intraday_gtt_is_replaced_once_its_day_is_over(rig: Rig) -> None:
    await rig.open(long_bosch(opened_at=START))
    assert await rig.keeper.keep_once() == 1
    first = await rig.state()
    assert first.state == "active" and first.trigger == 69475 and first.legs == (39,)
    assert first.expires_at is not None and first.expires_at > START
    assert await rig.keeper.keep_once() == 0, "nothing to change"
    rig.clock.advance(first.expires_at - START + 60)  # past midnight IST
    rig.sim.market.step()
    assert await rig.keeper.keep_once() == 1
    second = await rig.state()
    assert second.state == "active" and second.gtt_id != first.gtt_id
    statuses = {g["gtt_order_id"]: g["rules"][0]["status"] for g in rig.sim.gtt.everything()}
    assert statuses == {first.gtt_id: "EXPIRED", second.gtt_id: "SCHEDULED"}


async def test_a_place_whose_answer_was_lost_is_found_at_the_broker_not_placed_twice(rig: Rig) -> None:
    await rig.open(long_bosch(opened_at=START))
    await rig.sim.inject("reply_lost", 30)
    await rig.keeper.keep_once()
    lost = await rig.state()
    assert lost.state == "unknown" and not lost.gtt_id and lost.last_error  # a 504 (or a timeout on a busy machine)
    rig.sim.faults.clear()
    rig.clock.advance(5)
    await rig.keeper.keep_once()
    found = await rig.state()
    (only,) = rig.sim.gtt.everything()
    assert found.state == "active" and found.gtt_id == only["gtt_order_id"], "the GTT placed once, adopted"


async def test_a_gtt_cancelled_in_the_app_is_replaced_and_a_fired_one_starts_a_close(rig: Rig) -> None:
    await rig.open(long_bosch(opened_at=START))
    await rig.keeper.keep_once()
    first = await rig.state()
    rig.sim.gtt.cancel({"gtt_order_id": first.gtt_id})  # the person in the Upstox app
    assert await rig.keeper.check_fired() == 0
    assert rig.fired == []
    await rig.keeper.keep_once()
    second = await rig.state()
    assert second.state == "active" and second.gtt_id != first.gtt_id
    rig.sim.market.set_price("BOSCHLTD", 69400)  # fires at the broker
    assert await rig.keeper.check_fired() == 1
    assert rig.fired == ["BOSCHLTD"]


async def test_disarm_waits_for_a_keeper_call_in_flight(rig: Rig) -> None:
    position = long_bosch(opened_at=START)
    await rig.open(position)
    await rig.keeper.keep_once()
    gtt_id = (await rig.state()).gtt_id
    assert await rig.net.begin("BOSCHLTD", 70000) == "ok"  # a keeper call is out
    assert await rig.net.begin("BOSCHLTD", 70000) == "busy"
    disarm = asyncio.create_task(rig.net.disarm(position))
    with pytest.raises(TimeoutError):  # the manual clock stands still: only the call's end can release it
        await asyncio.wait_for(asyncio.shield(disarm), 0.3)
    assert rig.sim.gtt.gtts[gtt_id].rules[0].status == "SCHEDULED"
    await rig.net.end("BOSCHLTD")
    assert await disarm is None
    assert (await rig.state()).state == "cancelled"
    assert rig.sim.gtt.gtts[gtt_id].rules[0].status == "CANCELLED"


async def test_a_short_gets_a_buy_stop_above_and_its_close_cancels_it(rig: Rig) -> None:
    short = long_bosch(side=Side.SHORT, quantity=5, stop_loss=77000, take_profit=70000, opened_at=START)
    await rig.open(short)
    await rig.keeper.keep_once()
    net = await rig.state()
    (gtt,) = rig.sim.gtt.everything()
    rule = gtt["rules"][0]
    assert (rule["transaction_type"], rule["trigger_type"], rule["trigger_price"]) == ("BUY", "ABOVE", 773.85)
    assert net.state == "active" and net.trigger == 77385 and gtt["quantity"] == 5
    assert await rig.net.disarm(short) is None
    assert rig.sim.gtt.gtts[net.gtt_id].rules[0].status == "CANCELLED"
    assert rig.sim.orders.positions.net("NSE_EQ|INE323A01026", "I") == -5, "disarming sends no order"


async def test_a_close_after_a_lost_place_reply_cancels_the_gtt_the_broker_holds(rig: Rig) -> None:
    position = long_bosch(opened_at=START)
    await rig.open(position)
    await rig.sim.inject("reply_lost", 30)
    await rig.keeper.keep_once()
    assert (await rig.state()).state == "unknown"
    (stray,) = rig.sim.gtt.gtts.values()
    assert stray.rules[0].status == "SCHEDULED", "placed though the answer was lost"
    assert await rig.net.disarm(position) is None  # what a close runs first
    assert stray.rules[0].status == "CANCELLED" and (await rig.state()).state == "cancelled"


async def test_a_restarted_keeper_settles_a_call_its_predecessor_left_in_flight(rig: Rig) -> None:
    await rig.open(long_bosch(opened_at=START))
    assert await rig.net.begin("BOSCHLTD", 69475) == "ok"  # then the monitor was SIGKILLed mid-call
    assert (await rig.state()).busy_since is not None
    assert await rig.keeper.recover() == 1
    recovered = await rig.state()
    assert recovered.busy_since is None and recovered.state == "unknown" and recovered.intent == 69475
    await rig.keeper.keep_once()  # nothing at the broker: placed now, once
    assert (await rig.state()).state == "active" and len(rig.sim.gtt.gtts) == 1


def _sells(rig: Rig) -> list[str]:
    return [o.order_id for o in rig.sim.orders.orders.values() if o.transaction_type == "SELL"]


async def test_a_guard_close_cancels_the_gtt_first_and_a_fired_gtt_is_the_exit(rig: Rig) -> None:
    await rig.open(long_bosch(opened_at=START))
    await rig.keeper.keep_once()
    gtt_id = (await rig.state()).gtt_id
    rig.sim.market.set_price("BOSCHLTD", 69700)  # between the stop (698.25) and the GTT's trigger (694.75)
    stop = CloseRequest("BOSCHLTD", CloseReason.STOP_LOSS, "monitor", 69700, PriceSource.LIVE, 0.0)
    record = await rig.closer.close(stop)
    assert record.closed_by == "monitor" and len(_sells(rig)) == 1
    assert rig.sim.gtt.gtts[gtt_id].rules[0].status == "CANCELLED", "cancelled before the guard's order"
    rig.sim.market.set_price("BOSCHLTD", 69000)
    assert len(_sells(rig)) == 1, "no second exit"
    # Again, but the GTT fires first: its order is the exit, the guard sends nothing.
    rig.sim.market.set_price("BOSCHLTD", 73500)
    await rig.open(long_bosch(opened_at=START + 1))
    await rig.keeper.keep_once()
    rig.sim.market.set_price("BOSCHLTD", 69400)
    record = await rig.closer.close(stop)
    assert record.closed_by == "safety_net" and record.exit_price == 69400 and record.pnl == (69400 - 73500) * 39
    assert len(_sells(rig)) == 2 and rig.sim.orders.positions.net("NSE_EQ|INE323A01026", "I") == 0
