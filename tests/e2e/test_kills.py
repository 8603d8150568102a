"""Processes killed with SIGKILL: the feed (the monitor falls back), the monitor mid-close (reconciled, never
closed twice), the api (no state lost)."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.common.broker import UpstoxBroker
from libs.common.closing import TAG_PREFIX, close_tag
from libs.common.models import CloseReason, PositionState
from tests.e2e.harness import Stack
from tests.helpers import eventually

pytestmark = pytest.mark.e2e


async def test_killed_feed_switches_the_monitor_to_fallback(tmp_path: Path) -> None:
    """`kill -9` the feed: its heartbeat expires, the monitor decides on cached prices; a restart is live again."""
    async with Stack(tmp_path) as stack:
        await stack.start("sim", "feed", "monitor", "api")
        await stack.set_price("BOSCHLTD", 720.0)
        await stack.open_position("BOSCHLTD", "long", 10, 735.0, stop_loss=698.25)
        await eventually(lambda: _ltp_is(stack, "BOSCHLTD", "720.00"))
        await stack.wait_connected(True)
        mark = stack.mark("monitor")

        stack.kill("feed")
        await stack.wait_log("monitor", "Feed is not live: checking SL/TP on cached prices", since=mark)
        await stack.wait_connected(False)  # after 3 missed beats (libs/common/freshness.py)
        await eventually(lambda: _feed_alive_is(stack, False), timeout_s=5)  # once the heartbeat key expires
        assert stack.check("feed") == 1  # `python -m services.feed --check`, as a healthcheck runs it
        # The feed:status hash still says connected (nobody wrote it): the heartbeat is what tells.
        assert (await stack.feed_status()).connected is True

        resp = await stack.api("PATCH", "/api/v1/positions/BOSCHLTD", json={"stop_loss": 725.0})
        assert resp.status_code == 200, resp.text
        await stack.wait_log("monitor", "[SL] BOSCHLTD: Price ₹720.00 <= SL ₹725.00 (FALLBACK)", since=mark)
        await eventually(lambda: _state_is(stack, "BOSCHLTD", PositionState.CLOSED), timeout_s=10)
        assert len(await stack.orders("BOSCHLTD")) == 1

        await stack.start("feed")
        await stack.wait_connected(True)
        await stack.wait_log("monitor", "Feed is live: checking SL/TP on live prices", since=mark)
        assert stack.check("feed") == 0
    assert stack.count("monitor", "[SL] BOSCHLTD") == 1


async def test_monitor_killed_mid_close_is_reconciled_never_closed_twice(tmp_path: Path) -> None:
    """`kill -9` the monitor while its close order is in flight; on restart the close is reconciled by tag."""
    # A claim younger than MONITOR_STUCK_CLOSE_S may be a close still running elsewhere: compressed to 2 s.
    async with Stack(tmp_path, MONITOR_STUCK_CLOSE_S="2") as stack:
        await stack.start("sim", "feed", "monitor", "api")
        for symbol, ltp, quantity in (("BOSCHLTD", 720.0, 10), ("KAYNES", 200.0, 10), ("SBIN", 800.0, 5)):
            await stack.set_price(symbol, ltp)
            await stack.sim("POST", "/sim/trade", json={"symbol": symbol, "side": "buy", "quantity": quantity})
        await stack.open_position("BOSCHLTD", "long", 10, 735.0, at_broker=False, stop_loss=698.25)
        await stack.open_position("KAYNES", "long", 10, 195.0, at_broker=False, stop_loss=190.0)
        await stack.open_position("SBIN", "long", 5, 810.0, at_broker=False, stop_loss=790.0)
        await eventually(lambda: _ltp_is(stack, "SBIN", "800.00"))
        mark = stack.mark("monitor")

        # 1. A real kill with the order in flight: the broker fills it at once but holds its answer
        #    (reply_delay), so the monitor dies after the fill and before it hears of it. Then the answer is freed.
        await stack.sim("POST", "/sim/faults", json={"kind": "reply_delay", "duration_s": 60, "delay_s": 60})
        resp = await stack.api("PATCH", "/api/v1/positions/BOSCHLTD", json={"stop_loss": 725.0})
        assert resp.status_code == 200, resp.text
        await stack.wait_log("monitor", "[SL] BOSCHLTD: Price ₹720.00 <= SL ₹725.00", since=mark)
        await eventually(lambda: _filled(stack, "BOSCHLTD"), timeout_s=5)
        assert await _state_is(stack, "BOSCHLTD", PositionState.CLOSING)
        stack.kill("monitor")
        await stack.sim("POST", "/sim/faults", json={"kind": "reply_delay", "duration_s": 0})

        # 2. The same crash state made by hand for both outcomes: KAYNES claimed and its tagged order filled,
        #    SBIN claimed with no order sent (and its price now below SL).
        claim_id, kaynes = await stack.store.claim("KAYNES", CloseReason.STOP_LOSS)
        broker = UpstoxBroker(stack.settings())
        try:
            fill = await broker.close(kaynes, close_tag(claim_id), None)
        finally:
            await broker.aclose()
        await stack.set_price("SBIN", 780.0)
        await eventually(lambda: _ltp_is(stack, "SBIN", "780.00"))
        await stack.store.claim("SBIN", CloseReason.STOP_LOSS)
        in_flight = {s: len(await _close_orders(stack, s)) for s in ("BOSCHLTD", "KAYNES", "SBIN")}
        assert in_flight == {"BOSCHLTD": 1, "KAYNES": 1, "SBIN": 0}

        await stack.start("monitor")
        for symbol in ("BOSCHLTD", "KAYNES", "SBIN"):
            await eventually(lambda s=symbol: _state_is(stack, s, PositionState.CLOSED), timeout_s=20)
        await stack.wait_log("monitor", "Reconciled KAYNES: the broker had filled its close", since=mark)
        await stack.wait_log("monitor", "Reconciled SBIN: no filled order carries its close tag", since=mark)
        await stack.wait_log("monitor", "[SL] SBIN: Price ₹780.00 <= SL ₹790.00", since=mark)
        for symbol in ("BOSCHLTD", "KAYNES", "SBIN"):
            orders = await _close_orders(stack, symbol)
            assert len(orders) == 1, (symbol, orders)  # never closed twice
        closes = {c["symbol"]: c for c in await stack.closes()}
        assert sorted(closes) == ["BOSCHLTD", "KAYNES", "SBIN"]
        assert closes["KAYNES"]["order_id"] == fill.order_id and closes["KAYNES"]["closed_by"] == "reconcile"
        assert closes["BOSCHLTD"]["closed_by"] == "reconcile"  # the killed monitor's order, found by its tag
        assert closes["BOSCHLTD"]["order_id"] == (await _close_orders(stack, "BOSCHLTD"))[0]["order_id"]
        await stack.wait_log("monitor", "Reconciled BOSCHLTD: the broker had filled its close", since=mark)

        # 3. The api: killed and restarted, it serves the same positions and journal (all state is in Redis).
        await stack.sim("POST", "/sim/trade", json={"symbol": "RELIANCE", "side": "buy", "quantity": 1})
        await stack.open_position("RELIANCE", "long", 1, 1400.0, at_broker=False, stop_loss=1300.0)
        before = [await _get(stack, "/api/v1/positions"), await _get(stack, "/api/v1/positions/closed")]
        stack.kill("api")
        await stack.start("api")
        after = [await _get(stack, "/api/v1/positions"), await _get(stack, "/api/v1/positions/closed")]
        for rows in (before[0], after[0]):
            for row in rows["positions"]:
                row.pop("price_age_seconds"), row.pop("ltp"), row.pop("unrealized_pnl")  # move with the market
        assert after == before and len(after[1]["closes"]) == 3
        resp = await stack.emergency_close("RELIANCE")
        assert resp.status_code == 200 and resp.json()["message"] == "Position RELIANCE closed successfully"


# --- small readers -------------------------------------------------------------------------------


async def _feed_alive_is(stack: Stack, alive: bool) -> bool:
    return bool((await stack.health())["websocket"]["feed_alive"] is alive)


async def _ltp_is(stack: Stack, symbol: str, ltp: str) -> bool:
    return (await stack.price(symbol)).get("ltp") == ltp


async def _close_orders(stack: Stack, symbol: str) -> list[dict[str, object]]:
    """The guard's closing orders at the broker (not the trades that opened the positions)."""
    return [o for o in await stack.orders(symbol) if str(o.get("tag") or "").startswith(TAG_PREFIX)]


async def _filled(stack: Stack, symbol: str) -> bool:
    return [o["status"] for o in await _close_orders(stack, symbol)] == ["complete"]


async def _state_is(stack: Stack, symbol: str, state: PositionState) -> bool:
    return (await stack.position(symbol)).state is state


async def _get(stack: Stack, path: str) -> dict[str, object]:
    resp = await stack.api("GET", path)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())
