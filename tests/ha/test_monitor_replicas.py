"""Two monitors watch every position; the claim decides who closes. One SIGSTOPped mid-close: one order.

The claimant's order is in flight (the broker host hangs) when the claimant is frozen; the other monitor
reconciles the stuck claim by the order's tag once the broker answers, and the frozen one, resumed, sends
nothing more.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.common.models import PositionState
from tests.ha.harness import HAStack
from tests.helpers import eventually

pytestmark = pytest.mark.e2e


async def test_two_monitors_one_frozen_mid_close_send_one_order(tmp_path: Path) -> None:
    async with HAStack(tmp_path, MONITOR_STUCK_CLOSE_S="2", BROKER_TIMEOUT_S="20") as stack:
        await stack.start("sim")
        await stack.start_instances(("feed", "a"), ("monitor", "a"), ("monitor", "b"), ("api", "a"))
        await stack.set_price("BOSCHLTD", 720.0)
        await stack.open_held("BOSCHLTD", "long", 10, 735.0, stop_loss=698.25)
        await eventually(lambda: _ltp_is(stack, "BOSCHLTD", "720.00"), timeout_s=10)
        status = await stack.status()
        assert sorted(status["instances"]["monitor"]) == ["a", "b"]
        marks = {i: stack.mark(f"monitor@{i}") for i in "ab"}

        # The SL is crossed while the broker host hangs: both monitors decide, one claims and sends its order,
        # which is left unanswered; the other is refused by the claim.
        stack.pause("sim")
        resp = await stack.api("PATCH", "/api/v1/positions/BOSCHLTD", json={"stop_loss": 725.0})
        assert resp.status_code == 200, resp.text
        await eventually(lambda: _state_is(stack, "BOSCHLTD", PositionState.CLOSING), timeout_s=5)

        def claimant() -> str:
            deciders = [i for i in "ab" if stack.count(f"monitor@{i}", "[SL] BOSCHLTD", since=marks[i])]
            refused = [i for i in "ab" if stack.count(f"monitor@{i}", "BOSCHLTD is already closing", since=marks[i])]
            candidates = [i for i in deciders if i not in refused]
            return candidates[0] if len(candidates) == 1 else ""

        frozen = await eventually(claimant, timeout_s=5)
        other = "b" if frozen == "a" else "a"
        stack.pause(f"monitor@{frozen}")  # frozen mid-close: claim held, order in flight
        stack.resume("sim")
        await stack.sim_state()  # the broker answers again: the queued order fills

        # The other monitor settles the stuck claim by the order's tag (MONITOR_STUCK_CLOSE_S later).
        await eventually(lambda: _state_is(stack, "BOSCHLTD", PositionState.CLOSED), timeout_s=20)
        await stack.wait_log(f"monitor@{other}", "Reconciled BOSCHLTD: the broker had filled its close")
        journal = await stack.closes()
        assert [(c["symbol"], c["closed_by"]) for c in journal] == [("BOSCHLTD", "reconcile")]

        # The frozen claimant comes back with its late reply: no second order, no second journal entry.
        mark = stack.mark(f"monitor@{frozen}")
        stack.resume(f"monitor@{frozen}")
        await stack.wait_instance("monitor", frozen)
        await stack.wait_log(f"monitor@{frozen}", "BOSCHLTD", since=mark, timeout_s=20)
        assert len(await stack.close_orders("BOSCHLTD")) == 1
        assert len(await stack.closes()) == 1
        assert (await stack.position("BOSCHLTD")).state is PositionState.CLOSED


async def _ltp_is(stack: HAStack, symbol: str, ltp: str) -> bool:
    return (await stack.price(symbol)).get("ltp") == ltp


async def _state_is(stack: HAStack, symbol: str, state: PositionState) -> bool:
    return (await stack.position(symbol)).state is state
