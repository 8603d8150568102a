"""Layer 0 end to end: a stop-loss GTT kept at the (simulated) broker under every guarded position.

Real processes against a private Redis; the simulator stands in for Upstox and keeps firing GTTs on its own
market whoever is connected. BOSCHLTD long 10 at 735 with SL 698.25: the GTT triggers at 694.75 (0.5 %
below, on the 0.05 tick) and its LIMIT sells at 687.80 or better (the simulator's 1 % buffer).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from libs.common.closing import TAG_PREFIX
from tests.e2e.harness import Stack
from tests.e2e.test_fno import nifty_option
from tests.helpers import eventually

pytestmark = pytest.mark.e2e

NET = {"RECONCILE_INTERVAL_S": "1", "ORDER_BLOCKED_RETRY_S": "1", "SAFETY_NET": "on"}


async def entry(stack: Stack, quantity: int = 10, stop_loss: float = 698.25) -> None:
    """The bot's entry at the broker, then the guard is told about it."""
    await stack.set_price("BOSCHLTD", 735.0)
    await stack.open_position("BOSCHLTD", "long", quantity, 735.0, stop_loss=stop_loss)  # trades at the broker first


async def net_of(stack: Stack) -> dict[str, Any]:
    resp = await stack.api("GET", "/api/v1/positions/BOSCHLTD")
    resp.raise_for_status()
    return dict(resp.json()["safety_net"])


async def active(stack: Stack, trigger: float = 694.75) -> dict[str, Any]:
    async def placed() -> dict[str, Any] | None:
        net = await net_of(stack)
        return net if net["state"] == "active" and net["trigger_price"] == trigger else None

    return await eventually(placed, timeout_s=15)


async def gtts(stack: Stack) -> list[dict[str, Any]]:
    return list(await stack.sim("GET", "/sim/gtt"))


async def held(stack: Stack) -> int:
    rows = (await stack.sim("GET", "/sim/state"))["positions"]
    return sum(int(r["quantity"]) for r in rows if r["trading_symbol"] == "BOSCHLTD")


async def exits(stack: Stack) -> list[dict[str, Any]]:
    """Every order that sold BOSCHLTD (the guard's and the GTT's; the entry was a buy)."""
    rows = await stack.sim("GET", "/sim/orders")
    return [o for o in rows if o["trading_symbol"] == "BOSCHLTD" and o["transaction_type"] == "SELL"]


async def closed(stack: Stack) -> dict[str, Any]:
    async def one() -> dict[str, Any] | None:
        records = [c for c in await stack.closes() if c["symbol"] == "BOSCHLTD"]
        return records[0] if records else None

    return await eventually(one, timeout_s=20)


async def test_guard_stop_fires_first_and_cancels_the_gtt_after_a_patch_moved_it(tmp_path: Path) -> None:
    async with Stack(tmp_path, **NET) as stack:
        await stack.start("sim", "feed", "monitor", "api")
        await entry(stack)
        first = await active(stack)
        (gtt,) = await gtts(stack)
        assert gtt["gtt_order_id"] == first["gtt_id"] and gtt["product"] == "I" and gtt["quantity"] == 10
        rule = gtt["rules"][0]
        assert (rule["trigger_price"], rule["transaction_type"], rule["trigger_type"]) == (694.75, "SELL", "BELOW")
        # SL moved by PATCH: the same GTT is modified.
        resp = await stack.api("PATCH", "/api/v1/positions/BOSCHLTD", json={"stop_loss": 710})
        assert resp.status_code == 200, resp.text
        moved = await active(stack, trigger=706.45)
        assert moved["gtt_id"] == first["gtt_id"]
        (gtt,) = await gtts(stack)
        assert [h["event"] for h in gtt["history"]] == ["placed", "modified"], gtt["history"]
        assert gtt["rules"][0]["trigger_price"] == 706.45
        # Between the guard's stop and the GTT's trigger: the guard closes, the GTT is cancelled first.
        await stack.wait_connected(True)
        await stack.set_price("BOSCHLTD", 708.0)
        record = await closed(stack)
        assert record["closed_by"] == "monitor" and record["exit_price"] == 708.0
        (gtt,) = await gtts(stack)
        assert gtt["rules"][0]["status"] == "CANCELLED" and gtt["rules"][0]["order_id"] is None
        (only,) = await exits(stack)
        assert only["tag"].startswith(TAG_PREFIX) and only["status"] == "complete"
        assert await held(stack) == 0
        assert (await net_of(stack))["state"] == "cancelled"
        # Below the old trigger now: nothing fires again (a GTT fires inside the simulator's price change).
        await stack.set_price("BOSCHLTD", 690.0)
        assert len(await exits(stack)) == 1


async def test_guard_down_gtt_fires_then_restart_reports_the_safety_net_close(tmp_path: Path) -> None:
    async with Stack(tmp_path, **NET) as stack:
        await stack.start("sim", "monitor", "api")
        await entry(stack)
        await active(stack)
        for name in ("api", "monitor"):  # the whole guard goes down; "Upstox" keeps running
            stack.stop(name)
        await stack.set_price("BOSCHLTD", 694.0)
        (gtt,) = await gtts(stack)
        assert gtt["rules"][0]["status"] == "COMPLETED" and not gtt["live"]
        assert await held(stack) == 0, "the broker's stop sold while nobody was there"
        assert await stack.sim("GET", "/v3/order/gtt", headers={"Authorization": "Bearer sim-access-token"}) == {
            "status": "success", "data": []
        }  # fmt: skip
        mark = stack.mark("monitor")
        await stack.start("monitor", "api")
        record = await closed(stack)
        assert record["closed_by"] == "safety_net"
        assert record["exit_price"] == 694.0 and record["pnl"] == -410.0 and record["quantity"] == 10
        (only,) = await exits(stack)
        assert only["order_ref_id"] == gtt["gtt_order_id"] and only["tag"] is None
        line = await stack.wait_log("monitor", "[SAFETY] BOSCHLTD: closed by the safety net", since=mark)
        assert "10 at ₹694.00, P&L ₹-410.00" in line
        fired = [e for e in await stack.events() if e["kind"] == "closed" and e["record"]["closed_by"] == "safety_net"]
        assert len(fired) == 1 and fired[0]["record"]["order_id"] == only["order_id"]
        assert (await net_of(stack))["state"] == "fired"
        assert len(await exits(stack)) == 1 and await held(stack) == 0


async def test_emergency_close_racing_the_gtt_is_exactly_one_exit(tmp_path: Path) -> None:
    async with Stack(tmp_path, **NET) as stack:
        await stack.start("sim", "feed", "monitor", "api")
        for round_ in range(1, 4):
            await entry(stack)
            await active(stack)
            # The price goes through the GTT's trigger while a person closes by hand, at the same moment.
            _, resp = await asyncio.gather(stack.set_price("BOSCHLTD", 690.0), stack.emergency_close("BOSCHLTD"))
            assert resp.status_code in (200, 409), resp.text
            await eventually(lambda n=round_: _closes_are(stack, n), timeout_s=20)
            await eventually(lambda: _flat(stack), timeout_s=10)
            assert len(await exits(stack)) == round_, "exactly one exit per position"
            assert (await stack.closes())[0]["closed_by"] in ("api", "monitor", "safety_net")


async def _has_event(stack: Stack, kind: str) -> bool:
    return any(e["kind"] == kind for e in await stack.events())


async def _closes_are(stack: Stack, count: int) -> bool:
    return len([c for c in await stack.closes() if c["symbol"] == "BOSCHLTD"]) == count


async def _flat(stack: Stack) -> bool:
    return await held(stack) == 0


async def test_gap_through_the_gtt_limit_is_taken_over_by_the_live_guard(tmp_path: Path) -> None:
    async with Stack(tmp_path, **NET) as stack:
        await stack.start("sim", "feed", "monitor", "api")
        await entry(stack)
        await active(stack)
        await stack.wait_connected(True)
        await stack.set_price("BOSCHLTD", 600.0)  # gaps through 694.75 and the 687.80 limit
        record = await closed(stack)
        assert record["closed_by"] == "monitor" and record["exit_price"] == 600.0
        gtt_order, guard_order = sorted(await exits(stack), key=lambda o: o["order_id"])
        assert gtt_order["order_type"] == "LIMIT" and gtt_order["status"] == "cancelled"
        assert gtt_order["filled_quantity"] == 0 and gtt_order["price"] == 687.8
        assert guard_order["tag"].startswith(TAG_PREFIX) and guard_order["filled_quantity"] == 10
        assert await held(stack) == 0
        await stack.wait_log("monitor", "was not filled (0 of 10); cancelled it, the guard closes the rest")


async def test_ip_block_during_placement_is_visible_retried_and_placed_once_lifted(tmp_path: Path) -> None:
    async with Stack(tmp_path, **NET) as stack:
        await stack.start("sim", "monitor", "api")
        await stack.set_price("BOSCHLTD", 735.0)
        await stack.sim("POST", "/sim/trade", json={"symbol": "BOSCHLTD", "side": "buy", "quantity": 10})
        await stack.fault("ip_block", 4)
        await stack.open_position("BOSCHLTD", "long", 10, 735.0, at_broker=False, stop_loss=698.25)

        async def refused() -> dict[str, Any] | None:
            net = await net_of(stack)
            return net if net["state"] == "retrying" else None

        net = await eventually(refused, timeout_s=10)
        assert "UDAPI1154" in net["last_error"] and net["gtt_id"] is None
        status = (await stack.status())["safety_net"]
        assert status["enabled"] is True and status["states"].get("retrying") == 1
        assert status["failing"][0]["symbol"] == "BOSCHLTD" and "UDAPI1154" in status["failing"][0]["last_error"]
        # The event follows the "retrying" record and its log line: wait for it rather than race it.
        await eventually(lambda: _has_event(stack, "safety_net_failed"), timeout_s=5)
        assert await gtts(stack) == []
        placed = await active(stack)
        assert placed["last_error"] is None
        assert len(await gtts(stack)) == 1, "placed once"
        assert (await stack.sim_state())["gtt_calls"] >= 3, "refused, retried, placed"
        assert (await stack.status())["safety_net"]["failing"] == []
        assert stack.count("monitor", "Safety net for BOSCHLTD not in place (attempt 1)") == 1
        # Stop guarding: the GTT goes with the position, no order is sent.
        resp = await stack.api("DELETE", "/api/v1/positions/BOSCHLTD")
        assert resp.status_code == 200 and resp.json()["safety_net"]["state"] == "cancelled", resp.text
        (gtt,) = await gtts(stack)
        assert gtt["rules"][0]["status"] == "CANCELLED"
        assert await exits(stack) == [] and await held(stack) == 10


async def test_safety_net_off_makes_no_gtt_call(tmp_path: Path) -> None:
    async with Stack(tmp_path, **{**NET, "SAFETY_NET": "off"}) as stack:
        await stack.start("sim", "monitor", "api")
        await entry(stack)
        assert await net_of(stack) == {
            "state": "off", "gtt_id": None, "gtt_ids": [], "quantities": [], "trigger_price": None, "last_error": None
        }  # fmt: skip
        assert (await stack.status())["safety_net"]["enabled"] is False
        resp = await stack.emergency_close("BOSCHLTD")
        assert resp.status_code == 200, resp.text
        assert (await closed(stack))["closed_by"] == "api"
        assert await gtts(stack) == [] and (await stack.sim_state())["gtt_calls"] == 0


async def test_an_option_of_three_freeze_quantities_is_netted_within_the_limits_and_closed_flat_by_them(
    tmp_path: Path,
) -> None:
    """NIFTY weekly CE, 3 x 1800 (the freeze quantity) long at 150, stop 120: three GTTs of 1800 each at 119.40
    (a GTT's order is never sliced: one of 5400 would be rejected by the exchange when it fires). The guard goes
    down, the premium falls through: the three fire and the broker ends exactly flat; the guard, back, reports
    the position closed by the safety net with the three fills and sends nothing."""
    option = nifty_option()
    symbol, key, freeze = option.trading_symbol, option.instrument_key, int(option.freeze_quantity)
    async with Stack(tmp_path, **NET) as stack:
        await stack.start("sim", "monitor", "api")
        await stack.set_price(symbol, 150.0)
        await stack.open_position(symbol, "long", 3 * freeze, 150.0, stop_loss=120.0)

        async def netted() -> dict[str, Any] | None:
            resp = await stack.api("GET", f"/api/v1/positions/{quote(symbol)}")
            net = dict(resp.json()["safety_net"])
            return net if net["state"] == "active" else None

        net = await eventually(netted, timeout_s=15)
        assert net["quantities"] == [freeze] * 3 and len(set(net["gtt_ids"])) == 3 and net["trigger_price"] == 119.4
        placed = [g for g in await gtts(stack) if g["instrument_token"] == key]
        assert sorted(g["gtt_order_id"] for g in placed) == sorted(net["gtt_ids"])
        assert all(g["quantity"] == freeze and [h["event"] for h in g["history"]] == ["placed"] for g in placed)

        for name in ("api", "monitor"):
            stack.stop(name)
        await stack.set_price(symbol, 119.0)
        rows = (await stack.sim("GET", "/sim/state"))["positions"]
        assert [int(r["quantity"]) for r in rows if r["instrument_token"] == key] == [0], "exactly flat"
        sold = [
            o
            for o in await stack.sim("GET", "/sim/orders")
            if o["instrument_token"] == key and o["transaction_type"] == "SELL"
        ]
        assert sorted((o["quantity"], o["status"], o["order_ref_id"]) for o in sold) == sorted(
            (freeze, "complete", g) for g in net["gtt_ids"]
        )

        mark = stack.mark("monitor")
        await stack.start("monitor", "api")
        records = await eventually(lambda: _closes_of(stack, symbol), timeout_s=20)
        assert [(r["closed_by"], r["quantity"]) for r in records] == [("safety_net", 3 * freeze)]
        await stack.wait_log("monitor", f"[SAFETY] {symbol}: closed by the safety net", since=mark)
        assert await stack.orders(symbol) == [], "the guard sent nothing"


async def _closes_of(stack: Stack, symbol: str) -> list[dict[str, Any]] | None:
    records = [c for c in await stack.closes() if c["symbol"] == symbol]
    return records or None
