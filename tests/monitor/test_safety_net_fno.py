"""The safety net of an F&O position within the exchange's limits, and one keeper at a time.

Against the simulator over real HTTP and a real Redis (see `test_safety_net_keeper.py`), on a manual clock set to
now so the guard and the simulator list the same contracts. A NIFTY weekly CE of 3 x the freeze quantity (5400,
lot 75, freeze 1800) long at 150 with its stop at 120: three GTTs of 1800 each trigger at 119.40.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from libs.common import keys
from libs.common.closing import CloseRequest, PartialClose
from libs.common.fno import expires_on, is_expired
from libs.common.instruments import Instrument, load_instruments
from libs.common.models import CloseReason, CloseRecord, Position, PriceSource, Side
from libs.common.settings import Settings
from services.monitor.safety_net import SafetyNetKeeper
from tests.helpers import eventually
from tests.monitor.conftest import long_bosch
from tests.monitor.test_safety_net_keeper import START, Rig, rigged

pytestmark = pytest.mark.integration


def nifty_ce(now: float) -> Instrument:
    """The nearest NIFTY 24000 CE not expiring today (one expiring today has a day's band like 0.05-71.60 around a
    previous close of a few rupees: no GTT at 119.40; see tests/e2e/test_fno.py `nifty_option`)."""
    return next(
        i
        for i in load_instruments(now=now)
        if i.name == "NIFTY" and i.instrument_type == "CE" and i.strike_paise == 2400000
        and not expires_on(i, now) and not is_expired(i, now)
    )  # fmt: skip


def option_position(inst: Instrument, quantity: int = 5400) -> Position:
    return Position(
        symbol=inst.trading_symbol, instrument_key=inst.instrument_key, side=Side.LONG, quantity=quantity,
        entry_price=15000, stop_loss=12000, take_profit=20000, opened_at=1.0,
    )  # fmt: skip


async def armed(rig: Rig, inst: Instrument) -> None:
    """The option bought at 150 and guarded (`option_position`), its net placed by one keeper call."""
    rig.sim.market.set_price(inst.trading_symbol, 15000)
    await rig.open(option_position(inst))
    await rig.keeper.keep_once()


def stop(symbol: str, price: int) -> CloseRequest:
    return CloseRequest(symbol, CloseReason.STOP_LOSS, "monitor", price, PriceSource.LIVE, 0.0)


def gtts_of(rig: Rig, key: str) -> list[dict[str, object]]:
    return [g for g in rig.sim.gtt.everything() if g["instrument_token"] == key]


def sells(rig: Rig, key: str) -> list[tuple[int, int, str]]:
    """(quantity, filled, GTT id or '') of every SELL of the instrument, in order."""
    return [
        (o.quantity, o.filled_quantity, o.ref_id or "")
        for o in rig.sim.orders.orders.values()
        if o.transaction_type == "SELL" and o.instrument.instrument_key == key
    ]


async def test_three_freeze_quantities_get_three_gtts_within_the_limit_and_a_close_disarms_all(
    settings: Settings, redis: Redis
) -> None:
    inst = nifty_ce(time.time())
    async with rigged(settings, redis, time.time()) as rig:
        rig.sim.market.set_price(inst.trading_symbol, 15000)
        position = option_position(inst)
        await rig.open(position)
        assert await rig.keeper.keep_once() == 1  # one keeper call places the three legs
        net = await rig.state(inst.trading_symbol)
        assert net.state == "active" and net.legs == (1800, 1800, 1800) and len(set(net.ids)) == 3
        assert net.trigger == 11940
        placed = gtts_of(rig, inst.instrument_key)
        assert [g["quantity"] for g in placed] == [1800, 1800, 1800]
        assert {g["gtt_order_id"] for g in placed} == set(net.ids)
        assert await rig.keeper.keep_once() == 0, "nothing to change"

        rig.sim.market.set_price(inst.trading_symbol, 12500)
        record = await rig.closer.close(stop(inst.trading_symbol, 12500))
        assert record.closed_by == "monitor" and record.quantity == 5400
        assert [g["rules"][0]["status"] for g in gtts_of(rig, inst.instrument_key)] == ["CANCELLED"] * 3  # type: ignore[index]
        assert [(q, f) for q, f, _ in sells(rig, inst.instrument_key)] == [(1800, 1800)] * 3  # the guard's, sliced
        rig.sim.market.set_price(inst.trading_symbol, 11000)  # through the old trigger: nothing fires
        assert len(sells(rig, inst.instrument_key)) == 3
        assert rig.sim.orders.positions.net(inst.instrument_key, "I") == 0


async def test_all_legs_fired_is_a_safety_net_close_and_one_missing_leg_leaves_the_guard_only_the_rest(
    settings: Settings, redis: Redis
) -> None:
    inst = nifty_ce(time.time())
    key, symbol = inst.instrument_key, inst.trading_symbol
    async with rigged(settings, redis, time.time()) as rig:
        await armed(rig, inst)
        rig.sim.market.set_price(symbol, 11900)  # every leg fires, each a LIMIT within the freeze quantity
        assert [(q, f) for q, f, _ in sells(rig, key)] == [(1800, 1800)] * 3
        assert rig.sim.orders.positions.net(key, "I") == 0
        record = await rig.closer.close(stop(symbol, 11900))
        assert record.closed_by == "safety_net" and record.quantity == 5400 and record.exit_price == 11900
        assert len(sells(rig, key)) == 3, "the guard sent nothing"

        # Again; one leg was cancelled in the app. The keeper notices and places that leg alone again.
        await armed(rig, inst)
        first = await rig.state(symbol)
        rig.sim.gtt.cancel({"gtt_order_id": first.ids[2]})
        assert await rig.keeper.check_fired() == 0
        assert (await rig.state(symbol)).ids == first.ids[:2]
        assert await rig.keeper.keep_once() == 1
        again = await rig.state(symbol)
        assert again.ids[:2] == first.ids[:2] and again.ids[2] not in first.ids and again.legs == (1800,) * 3
        # A leg cancelled once more, then the price falls through: two legs sell 3600 at the broker, and the
        # guard's close sells only the 1800 still held, in one order.
        rig.sim.gtt.cancel({"gtt_order_id": again.ids[0]})
        rig.sim.market.set_price(symbol, 11900)
        assert rig.sim.orders.positions.net(key, "I") == 1800
        record = await rig.closer.close(stop(symbol, 11900))
        assert record.closed_by == "monitor" and record.quantity == 5400
        guard = [(q, f) for q, f, ref in sells(rig, key)[3:] if not ref]
        assert guard == [(1800, 1800)] and len(sells(rig, key)) == 6
        assert rig.sim.orders.positions.net(key, "I") == 0


async def test_legs_that_fired_before_a_close_that_sold_only_part_are_journaled_once_and_the_rest_netted_again(
    settings: Settings, redis: Redis
) -> None:
    """Two of three legs fire (3600 sold), then the guard's orders fill only part of the 1800 left: the legs' fills
    and the guard's part are one journal entry, the net counts as disarmed (a later disarm that reported the same
    fills again would journal them twice and take the 150 still held for sold), the keeper nets the rest afresh,
    and the next close sells exactly the rest: 5400 journaled in all, the broker flat."""
    inst = nifty_ce(time.time())
    key, symbol = inst.instrument_key, inst.trading_symbol
    async with rigged(settings, redis, time.time()) as rig:
        await armed(rig, inst)
        first = (await rig.state(symbol)).ids
        rig.sim.gtt.cancel({"gtt_order_id": first[0]})  # one leg cancelled in the app
        rig.sim.market.set_price(symbol, 11900)  # the other two fire
        assert rig.sim.orders.positions.net(key, "I") == 1800
        await rig.sim.inject("partial_fill", 30, ratio=0.5)  # the guard's four orders fill 900, 450, 225, 75
        with pytest.raises(PartialClose, match="sold 1650 of 1800; 150 still held"):
            await rig.closer.close(stop(symbol, 11900))
        position = await rig.store.get(symbol)
        assert position is not None and position.quantity == 150 and rig.sim.orders.positions.net(key, "I") == 150
        assert [(r.quantity, r.remaining) for r in await rig.store.journal() if isinstance(r, CloseRecord)] == [
            (5250, 150)
        ]
        assert (await rig.state(symbol)).state == "cancelled"

        rig.sim.faults.clear()
        rig.sim.market.set_price(symbol, 12500)  # above the trigger: the new net waits
        await rig.keeper.keep_once()
        again = await rig.state(symbol)
        assert again.legs == (150,) and not set(again.ids) & set(first)
        record = await rig.closer.close(stop(symbol, 12500))
        assert (record.quantity, record.remaining, record.closed_by) == (150, 0, "monitor")
        journal = [r for r in await rig.store.journal() if isinstance(r, CloseRecord)]
        assert [(r.quantity, r.remaining) for r in journal] == [(150, 0), (5250, 150)]  # newest first: 5400 in all
        assert rig.sim.orders.positions.net(key, "I") == 0
        renewed = [g["rules"][0]["status"] for g in gtts_of(rig, key) if g["gtt_order_id"] in again.ids]  # type: ignore[index]
        assert renewed == ["CANCELLED"]  # disarmed before the guard sold the rest


async def test_a_position_too_big_for_25_gtts_is_refused_visibly(settings: Settings, redis: Redis) -> None:
    inst = nifty_ce(time.time())
    async with rigged(settings, redis, time.time()) as rig:
        rig.sim.market.set_price(inst.trading_symbol, 15000)
        await rig.store.open(option_position(inst, quantity=26 * 1800))  # the broker would need 26 slices too
        assert await rig.keeper.keep_once() == 0
        net = await rig.state(inst.trading_symbol)
        assert net.state == "refused" and "needs 26 orders of at most 1800" in net.last_error
        assert gtts_of(rig, inst.instrument_key) == []
        events = await rig.store.recent_events(5)
        assert any(e.get("kind") == "safety_net_failed" for e in events), events


async def test_only_the_lease_holder_keeps_and_a_fenced_keeper_starts_no_call(settings: Settings, redis: Redis) -> None:
    async with rigged(settings, redis, START) as rig:
        await _one_keeper_at_a_time(rig, redis)


async def _one_keeper_at_a_time(rig: Rig, redis: Redis) -> None:
    other = SafetyNetKeeper(
        rig.settings, redis, rig.net, rig.store, rig.clock, close_fired=lambda p: rig.fired.append(p.symbol)
    )
    await rig.open(long_bosch(opened_at=rig.clock.now()))
    assert await rig.keeper.keep_once() == 1 and rig.keeper.keeping
    await rig.net.end("BOSCHLTD", trigger="")  # something to do for whoever keeps the nets
    assert await other.keep_once() == 0 and not other.keeping, "a standby makes no call"
    await redis.delete(keys.SAFETY_NET_LEASE)  # the keeper paused past its lease; the standby takes over
    assert await other.hold()
    assert await rig.keeper.keep_once() == 0 and not rig.keeper.keeping, "fenced: the old keeper starts no call"
    assert await other.keep_once() == 1
    (gtt,) = rig.sim.gtt.everything()
    assert [h["event"] for h in gtt["history"]] == ["placed", "modified"]


async def test_a_leg_whose_answer_was_lost_is_adopted_and_only_the_rest_is_placed(
    settings: Settings, redis: Redis
) -> None:
    inst = nifty_ce(time.time())
    symbol = inst.trading_symbol
    async with rigged(settings, redis, time.time()) as rig:
        rig.sim.market.set_price(symbol, 15000)
        await rig.open(option_position(inst))
        await rig.sim.inject("reply_lost", 30)
        await rig.keeper.keep_once()  # the first leg is placed, its answer lost: nothing more is placed blindly
        lost = await rig.state(symbol)
        assert lost.state == "unknown" and lost.ids == () and lost.intent == 11940
        assert len(gtts_of(rig, inst.instrument_key)) == 1
        rig.sim.faults.clear()
        rig.clock.advance(5)
        await rig.keeper.keep_once()
        found = await rig.state(symbol)
        standing = gtts_of(rig, inst.instrument_key)
        assert found.state == "active" and found.legs == (1800,) * 3
        assert sorted(found.ids) == sorted(str(g["gtt_order_id"]) for g in standing) and len(standing) == 3


async def test_a_close_claimed_while_legs_are_being_placed_leaves_no_gtt_standing(
    settings: Settings, redis: Redis
) -> None:
    """The keeper places three legs, 0.2 s apart; a stop claims the position after the first. The keeper places no
    further leg once the position is closing, the close waits for the keeper's call, then cancels what stands and
    sells: one exit, no GTT left live, none cancelled twice."""
    inst = nifty_ce(time.time())
    key, symbol = inst.instrument_key, inst.trading_symbol
    async with rigged(settings, redis, time.time()) as rig:
        rig.sim.market.set_price(symbol, 15000)
        await rig.open(option_position(inst))
        keeping = asyncio.create_task(rig.keeper.keep_once())
        await eventually(lambda: len(gtts_of(rig, key)) == 1, timeout_s=5, interval_s=0.01)
        record = await rig.closer.close(stop(symbol, 12500))
        await keeping
        assert record.closed_by == "monitor" and record.quantity == 5400
        made = gtts_of(rig, key)
        assert 1 <= len(made) < 3, "no leg placed once the position was claimed"
        for gtt in made:
            events = [h["event"] for h in gtt["history"]]  # type: ignore[union-attr]
            assert events == ["placed", "cancelled"], events
        assert [(q, f) for q, f, _ in sells(rig, key)] == [(1800, 1800)] * 3
        assert rig.sim.orders.positions.net(key, "I") == 0
