"""Two monitors watch every position; the claim decides who closes. One SIGSTOPped mid-close: one order.

Frozen with its order in flight (the order reached the broker, its answer is held back by a proxy), or frozen
between its claim and its order (inside WAIT: the replica hangs): either way the other monitor settles the
stuck claim by the order's tag, and the frozen one, resumed, sends nothing more.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from libs.common.models import PositionState
from tests.ha.harness import HAStack
from tests.ha.order_proxy import OrderProxy
from tests.helpers import eventually

pytestmark = pytest.mark.e2e


async def test_two_monitors_one_frozen_mid_close_send_one_order(tmp_path: Path) -> None:
    async with (
        HAStack(tmp_path, MONITOR_STUCK_CLOSE_S="2", BROKER_TIMEOUT_S="20") as stack,
        OrderProxy(stack.sim_port) as proxy,
    ):
        stack.env["UPSTOX_ORDER_BASE"] = proxy.url  # orders pass the proxy: the test sees them arrive
        await stack.start("sim")
        await stack.start_instances(("feed", "a"), ("monitor", "a"), ("monitor", "b"), ("api", "a"))
        await stack.set_price("BOSCHLTD", 720.0)
        await stack.open_position("BOSCHLTD", "long", 10, 735.0, stop_loss=698.25)
        await eventually(lambda: _ltp_is(stack, "BOSCHLTD", "720.00"), timeout_s=10)
        status = await stack.status()
        assert sorted(status["instances"]["monitor"]) == ["a", "b"]
        marks = {i: stack.mark(f"monitor@{i}") for i in "ab"}

        # The SL is crossed while monitor b is held, so monitor a claims and sends its order; the order reaches the
        # broker (and fills) but its answer is held, so a waits for it. Then a freezes mid-close and b comes back.
        frozen, other = "a", "b"
        stack.pause(f"monitor@{other}")
        proxy.hold()
        resp = await stack.api("PATCH", "/api/v1/positions/BOSCHLTD", json={"stop_loss": 725.0})
        assert resp.status_code == 200, resp.text
        await asyncio.wait_for(proxy.order_seen.wait(), timeout=10)
        assert stack.count(f"monitor@{frozen}", "[SL] BOSCHLTD", since=marks[frozen]) == 1
        stack.pause(f"monitor@{frozen}")  # frozen mid-close: claim held, order in flight
        stack.resume(f"monitor@{other}")
        proxy.release()

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


async def test_a_claimant_frozen_before_its_order_never_sends_it_late(tmp_path: Path) -> None:
    """The claimant is frozen between its claim and its order (inside WAIT: the replica hangs). The other
    monitor finds the claim stuck with no order by its tag, reopens and closes the position; the claimant,
    resumed, is fenced (its claim taken over) and sends nothing."""
    env = {"MONITOR_STUCK_CLOSE_S": "2", "CLAIM_REPLICA_TIMEOUT_S": "30"}
    async with HAStack(tmp_path, **env) as stack:
        await stack.start("sim")
        await stack.start_instances(("feed", "a"), ("monitor", "a"), ("monitor", "b"), ("api", "a"))
        await stack.set_price("BOSCHLTD", 720.0)
        await stack.open_position("BOSCHLTD", "long", 10, 735.0, stop_loss=698.25)
        await eventually(lambda: _ltp_is(stack, "BOSCHLTD", "720.00"), timeout_s=10)
        marks = {i: stack.mark(f"monitor@{i}") for i in "ab"}

        replica = stack.topology.data[1]
        assert replica.proc is not None
        frozen, other = "a", "b"
        stack.pause(f"monitor@{other}")  # held while a claims, so a is the claimant
        os.kill(replica.proc.pid, signal.SIGSTOP)  # WAIT now blocks: the claimant sits between claim and order
        try:
            resp = await stack.api("PATCH", "/api/v1/positions/BOSCHLTD", json={"stop_loss": 725.0})
            assert resp.status_code == 200, resp.text
            await eventually(lambda: _state_is(stack, "BOSCHLTD", PositionState.CLOSING), timeout_s=5)
            # Inside WAIT, not still reading the broker's positions between its claim and WAIT: frozen there, it
            # would come back to a flat broker and settle nothing (as safe, but not this scenario).
            await eventually(lambda: _waiting_for_a_replica(stack), timeout_s=10)
            assert stack.count(f"monitor@{frozen}", "[SL] BOSCHLTD", since=marks[frozen]) == 1
            stack.pause(f"monitor@{frozen}")
            stack.resume(f"monitor@{other}")
        finally:
            os.kill(replica.proc.pid, signal.SIGCONT)

        # The other monitor: stuck claim, no order with its tag -> reopened -> closed by it, one order.
        await stack.wait_log(f"monitor@{other}", "Reconciled BOSCHLTD: no filled order carries its close tag")
        await eventually(lambda: _state_is(stack, "BOSCHLTD", PositionState.CLOSED), timeout_s=20)
        assert [(c["symbol"], c["closed_by"]) for c in await stack.closes()] == [("BOSCHLTD", "monitor")]

        # The frozen claimant resumes: its WAIT answers, but the claim fence after it finds the claim no longer
        # its own: no second order.
        mark = stack.mark(f"monitor@{frozen}")
        stack.resume(f"monitor@{frozen}")
        await stack.wait_log(f"monitor@{frozen}", "taken over while this closer waited", since=mark, timeout_s=20)
        assert len(await stack.close_orders("BOSCHLTD")) == 1
        assert len(await stack.closes()) == 1


async def _ltp_is(stack: HAStack, symbol: str, ltp: str) -> bool:
    return (await stack.price(symbol)).get("ltp") == ltp


async def _waiting_for_a_replica(stack: HAStack) -> bool:
    """A client of the master is blocked in WAIT (the claim's confirmation on a replica)."""
    clients = await stack.redis.client_list()
    return any(c.get("cmd") == "wait" for c in clients)


async def _state_is(stack: HAStack, symbol: str, state: PositionState) -> bool:
    return (await stack.position(symbol)).state is state
