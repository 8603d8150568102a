"""The broker is the truth, across process boundaries: a closer stopped between its claim and its order sends
nothing once its claim was taken over, and a position no longer guarded gets no order (real processes)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from libs.common.models import PositionState
from tests.e2e.harness import Stack
from tests.helpers import eventually

pytestmark = pytest.mark.e2e


async def _state(stack: Stack, symbol: str) -> PositionState:
    return (await stack.position(symbol)).state


async def test_an_api_stopped_between_claim_and_order_past_the_stuck_threshold_sends_nothing(tmp_path: Path) -> None:
    """SIGSTOP the api holding a claim (its broker call hangs on a stopped simulator); the monitor reconciles the
    stuck claim, closes on the SL itself; the api, woken, finds its claim taken over: one order in all."""
    async with Stack(tmp_path, MONITOR_STUCK_CLOSE_S="2", RECONCILE_INTERVAL_S="600") as stack:
        await stack.start("sim", "feed", "monitor", "api")
        await stack.set_price("BOSCHLTD", 720.0)
        await stack.open_position("BOSCHLTD", "long", 10, 735.0, stop_loss=698.25)
        await stack.wait_connected(True)
        stack.pause("sim")  # the api's read of the broker's positions will hang
        async with httpx.AsyncClient(timeout=60) as http:
            emergency = asyncio.create_task(
                http.post(
                    stack.api_url + "/api/v1/monitoring/emergency-close-position",
                    json={"symbol": "BOSCHLTD", "reason": "emergency"},
                )
            )
            await eventually(lambda: _is(stack, PositionState.CLOSING), timeout_s=10, interval_s=0.01)
            stack.pause("api")  # claimed, no order sent
            stack.resume("sim")
            mark = stack.mark("monitor")
            await stack.wait_log("monitor", "Reconciled BOSCHLTD: no filled order carries its close tag", since=mark)
            await eventually(lambda: _is(stack, PositionState.OPEN), timeout_s=10)
            await stack.set_price("BOSCHLTD", 690.0)
            await eventually(lambda: _is(stack, PositionState.CLOSED), timeout_s=10)
            stack.resume("api")
            answer = await emergency
        assert answer.status_code == 409, answer.text
        assert "taken over" in answer.json()["detail"]
        orders = await stack.orders("BOSCHLTD")
        assert len(orders) == 1 and orders[0]["quantity"] == 10
        closes = await stack.closes()
        assert [(c["symbol"], c["closed_by"]) for c in closes] == [("BOSCHLTD", "monitor")]
        state = await stack.sim_state()
        assert [p["quantity"] for p in state["positions"] if p["trading_symbol"] == "BOSCHLTD"] == [0]


async def _is(stack: Stack, state: PositionState) -> bool:
    return await _state(stack, "BOSCHLTD") is state


async def test_a_position_no_longer_guarded_gets_no_order(tmp_path: Path) -> None:
    """DELETE stops guarding without an order; a witness position crossing its SL on the same prices shows the
    monitor did act on them."""
    async with Stack(tmp_path) as stack:
        await stack.start("sim", "feed", "monitor", "api")
        await stack.set_price("KAYNES", 200.0)
        await stack.set_price("SBIN", 800.0)
        await stack.open_position("KAYNES", "long", 10, 195.0, stop_loss=190.0)
        await stack.open_position("SBIN", "long", 5, 810.0, stop_loss=790.0)
        await stack.wait_connected(True)
        resp = await stack.api("DELETE", "/api/v1/positions/KAYNES")
        assert resp.status_code == 200 and resp.json()["state"] == "removed", resp.text
        mark = stack.mark("monitor")
        await stack.set_price("KAYNES", 185.0)
        await stack.set_price("SBIN", 780.0)
        await stack.wait_log("monitor", "[SL] SBIN", since=mark)
        await eventually(lambda: _closed(stack, "SBIN"), timeout_s=10)
        assert stack.count("monitor", "[SL] KAYNES", since=mark) == 0
        assert await stack.orders("KAYNES") == [] and len(await stack.orders("SBIN")) == 1
        assert (await stack.api("GET", "/api/v1/positions/KAYNES")).status_code == 404


async def _closed(stack: Stack, symbol: str) -> bool:
    return (await stack.position(symbol)).state is PositionState.CLOSED


async def test_an_ip_block_is_shown_retried_slowly_and_the_close_goes_through_once_lifted(tmp_path: Path) -> None:
    """403 UDAPI1154 on every order call: /status says why, one [ERROR] line, a handful of calls (not a storm),
    the position stays open; once the block lifts the next retry closes it, once."""
    async with Stack(tmp_path, ORDER_BLOCKED_RETRY_S="1") as stack:
        await stack.start("sim", "feed", "monitor", "api")
        await stack.set_price("BOSCHLTD", 720.0)
        await stack.open_position("BOSCHLTD", "long", 10, 735.0, stop_loss=698.25)
        await stack.wait_connected(True)
        await stack.fault("ip_block", 4)
        await stack.set_price("BOSCHLTD", 690.0)

        async def blocked() -> dict[str, object] | None:
            orders = (await stack.status())["orders"]
            return orders if orders["blocked"] else None

        shown = await eventually(blocked, timeout_s=10)
        assert "UDAPI1154" in str(shown["reason"]) and "static IP" in str(shown["reason"])
        # The block is recorded as the refusal comes back; the claim is released just after, and retaken at
        # each retry: the position is back under guard between the tries, never left claimed.
        await eventually(lambda: _is(stack, PositionState.OPEN), timeout_s=2)
        assert (await stack.status())["orders"]["blocked"] is True
        await eventually(lambda: _closed(stack, "BOSCHLTD"), timeout_s=15)
        assert (await stack.status())["orders"]["blocked"] is False
        assert 2 <= (await stack.sim_state())["blocked_order_calls"] <= 8  # ~1 per second for 4 s
        assert len(await stack.orders("BOSCHLTD")) == 1
    assert stack.count("monitor", "Order calls are blocked by the broker") == 1
    assert stack.count("monitor", "Order calls are accepted again") == 1
