"""F&O positions across real processes: a NIFTY weekly option larger than the freeze quantity closes through
sliced child orders to exactly flat (one child partially filled), a quantity that is not a whole number of lots
is refused naming the lot size, and an option's stop-loss fires on the cached premium during a WebSocket drop."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from libs.common.fno import expires_on, is_expired
from libs.common.instruments import Instrument, load_instruments
from libs.common.models import PositionState
from tests.e2e.harness import Stack
from tests.helpers import eventually

pytestmark = pytest.mark.e2e


def nifty_option(kind: str = "CE", strike: int = 24000) -> Instrument:
    """The nearest NIFTY option that does not expire today (the same row every service generates for today).

    Not one expiring today: its previous close (09:15 IST) is then a few rupees and its day's band (up to twice
    that) holds none of the premiums these tests set, so on an expiry day (Tuesday IST, until 15:30) a GTT at
    119.40 was refused. Weekly or monthly: the week before the monthly expiry, no other weekly is listed."""
    now = time.time()
    return next(
        i
        for i in load_instruments(now=now)
        if i.name == "NIFTY" and i.instrument_type == kind and i.strike_paise == strike * 100
        and not expires_on(i, now) and not is_expired(i, now)
    )  # fmt: skip


async def _state(stack: Stack, symbol: str) -> PositionState:
    return (await stack.position(symbol)).state


async def test_an_option_of_three_freeze_quantities_closes_sliced_to_exactly_flat(tmp_path: Path) -> None:
    option = nifty_option()
    symbol, lot, freeze = option.trading_symbol, option.lot_size, int(option.freeze_quantity)
    quantity = 3 * freeze
    async with Stack(tmp_path, RECONCILE_INTERVAL_S="600") as stack:
        await stack.start("sim", "feed", "monitor", "api")
        await stack.set_price(symbol, 150.0)
        await stack.sim("POST", "/sim/trade", json={"symbol": symbol, "side": "buy", "quantity": quantity})

        body = {"symbol": symbol, "side": "long", "quantity": quantity - 10, "entry_price": 150.0, "stop_loss": 120.0}
        refused = await stack.api("POST", "/api/v1/positions", json=body)
        assert refused.status_code == 422, refused.text
        assert f"the lot size is {lot}" in refused.json()["detail"][0]["msg"]

        await stack.open_position(symbol, "long", quantity, 150.0, at_broker=False, stop_loss=120.0)
        await stack.sim(
            "POST", "/sim/faults", json={"kind": "partial_fill", "duration_s": 60, "ratio": 0.5, "orders": 1}
        )
        mark = stack.mark("monitor")
        await stack.set_price(symbol, 110.0)
        await stack.wait_log("monitor", f"[SL] {symbol}: Price ₹110.00 <= SL ₹120.00", since=mark)
        await eventually(lambda: _closed(stack, symbol), timeout_s=20)

        orders = await stack.orders(symbol)
        # One sliced order of three children (the first half filled, the rest cancelled), then the remainder.
        assert [o["quantity"] for o in orders] == [freeze, freeze, freeze, freeze // 2], orders
        assert [o["filled_quantity"] for o in orders] == [freeze // 2, freeze, freeze, freeze // 2], orders
        assert all(o["quantity"] <= freeze and o["transaction_type"] == "SELL" for o in orders)
        assert len({o["tag"] for o in orders}) == 1  # one claim, one close tag
        state = await stack.sim_state()
        assert [p["quantity"] for p in state["positions"] if p["trading_symbol"] == symbol] == [0]
        closes = [c for c in await stack.closes() if c["symbol"] == symbol]
        assert len(closes) == 1 and closes[0]["reason"] == "stop_loss", closes


async def _closed(stack: Stack, symbol: str) -> bool:
    return await _state(stack, symbol) is PositionState.CLOSED


async def test_an_option_stop_fires_on_the_cached_premium_during_a_drop(tmp_path: Path) -> None:
    """The premium follows NIFTY: a 1 % fall of the index takes a good part of an at-the-money premium. The tick
    carrying it is cached while the monitor restarts, then the WebSocket drops; the monitor, back, acts on the
    cached premium with the guide's lines and sells exactly the lots held. The feed subscribes the option in
    option_greeks and its underlying besides the watchlist; health shows the mode per symbol."""
    option = nifty_option()
    symbol, lot = option.trading_symbol, option.lot_size
    # The REST poll (layer 2b) would price the option through the drop; a long interval keeps it out, so the
    # cached layer is what this test sees (as when the whole network is down, not just the WebSocket).
    settings = {"PRICE_STALE_AFTER_S": "20", "RECONCILE_INTERVAL_S": "600", "REST_POLL_INTERVAL_S": "600"}
    async with Stack(tmp_path, **settings) as stack:
        await stack.start("sim", "feed", "monitor", "api", env={"FEED_WATCHLIST": '["BOSCHLTD"]'})
        await stack.set_price("NIFTY", 24000.0)
        bought = await stack.sim("POST", "/sim/trade", json={"symbol": symbol, "side": "buy", "quantity": 2 * lot})
        premium = bought["order"]["average_price"]
        stop = round(premium * 0.75, 2)
        await stack.open_position(symbol, "long", 2 * lot, premium, at_broker=False, stop_loss=stop)
        await stack.wait_connected(True)
        await eventually(lambda: _has_price(stack, symbol), timeout_s=10)
        await eventually(lambda: _has_price(stack, "NIFTY"), timeout_s=10)  # the underlying, not in the watchlist
        await eventually(lambda: _modes_are(stack, ("ltpc", {symbol: "option_greeks"}, 3)), timeout_s=10)
        (connection,) = (await stack.sim_state())["connections"]
        assert connection["subscriptions"] == {"ltpc": 2, "option_greeks": 1}

        stack.stop("monitor")  # the fast move's tick is cached with no monitor to see it live
        await stack.set_price("NIFTY", 23760.0)
        await eventually(lambda: _ltp_below(stack, symbol, stop), timeout_s=10)
        crashed = float((await stack.price(symbol))["ltp"])
        await stack.fault("drop", 8)
        await stack.wait_connected(False, timeout_s=10)
        mark = stack.mark("monitor")
        await stack.start("monitor")
        sl_line = f"[SL] {symbol}: Price ₹{crashed:,.2f} <= SL ₹{stop:,.2f} (FALLBACK)"
        await stack.wait_log("monitor", sl_line, since=mark)
        await eventually(lambda: _closed(stack, symbol), timeout_s=15)
        assert not (await stack.health())["websocket"]["connected"]  # closed while the feed was still down
        orders = await stack.orders(symbol)
        assert [(o["quantity"], o["status"]) for o in orders] == [(2 * lot, "complete")], orders

    monitor = stack.lines("monitor", mark)
    fallback = next(i for i, line in enumerate(monitor) if f"[FALLBACK] Using cached price for {symbol}" in line)
    assert fallback < next(i for i, line in enumerate(monitor) if sl_line in line)
    assert premium * 0.6 > crashed  # a 1 % index move took over 40 % of the premium


async def _modes_are(stack: Stack, expected: tuple[str, dict[str, str], int]) -> bool:
    websocket = (await stack.health())["websocket"]
    assert (websocket["mode"], websocket["modes"], websocket["subscribed_symbols"]) == expected
    return True


async def _has_price(stack: Stack, symbol: str) -> bool:
    return "ltp" in await stack.price(symbol)


async def _ltp_below(stack: Stack, symbol: str, level: float) -> bool:
    price = await stack.price(symbol)
    return "ltp" in price and float(price["ltp"]) < level
