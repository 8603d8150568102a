"""Two monitors, one safety-net keeper: the holder of `safety_net:lease` places the GTTs, the other stands by.

Real processes on the Sentinel topology: monitors a and b, one api, the simulator. Every position gets exactly
one set of GTTs (an option of 3 x the freeze quantity: three), each placed once and modified once per stop-loss
change; the keeper is SIGKILLed, the other monitor takes the lease within `SAFETY_NET_LEASE_S` and keeps the same
GTTs (nothing re-placed), and `/status` and health name the keeper.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.e2e.test_fno import nifty_option
from tests.ha.harness import HAStack
from tests.helpers import eventually

pytestmark = pytest.mark.e2e

LEASE_S = 3.0
ENV = {"SAFETY_NET": "on", "SAFETY_NET_LEASE_S": str(LEASE_S), "RECONCILE_INTERVAL_S": "1"}


async def net_of(stack: HAStack, symbol: str) -> dict[str, Any]:
    resp = await stack.api("GET", f"/api/v1/positions/{quote(symbol)}")
    resp.raise_for_status()
    return dict(resp.json()["safety_net"])


async def keeper_of(stack: HAStack) -> dict[str, Any]:
    return dict((await stack.status())["safety_net"]["keeper"])


async def history(stack: HAStack) -> dict[str, list[str]]:
    """Each GTT ever made at the simulator, by id: its events."""
    return {g["gtt_order_id"]: [h["event"] for h in g["history"]] for g in await stack.sim("GET", "/sim/gtt")}


async def test_one_keeper_places_each_gtt_once_and_the_other_takes_over_when_it_is_killed(tmp_path: Path) -> None:
    option = nifty_option()
    symbol, freeze = option.trading_symbol, int(option.freeze_quantity)
    async with HAStack(tmp_path, **ENV) as stack:
        await stack.start("sim")
        await stack.start_instances(("monitor", "a"), ("monitor", "b"), ("api", "a"))
        await stack.set_price("BOSCHLTD", 735.0)
        await stack.set_price(symbol, 150.0)
        await stack.open_position("BOSCHLTD", "long", 10, 735.0, stop_loss=698.25)
        await stack.open_position(symbol, "long", 3 * freeze, 150.0, stop_loss=120.0)

        async def both_active() -> dict[str, dict[str, Any]] | None:
            nets = {s: await net_of(stack, s) for s in ("BOSCHLTD", symbol)}
            return nets if all(n["state"] == "active" for n in nets.values()) else None

        nets = await eventually(both_active, timeout_s=20)
        assert nets["BOSCHLTD"]["quantities"] == [10] and nets[symbol]["quantities"] == [freeze] * 3
        keeper = await keeper_of(stack)
        first, other = keeper["keeper"], ({"a", "b"} - {keeper["keeper"]}).pop()
        assert keeper["standbys"] == [other]
        assert (await stack.health())["safety_net_keeper"] == first
        ids = {*nets["BOSCHLTD"]["gtt_ids"], *nets[symbol]["gtt_ids"]}
        assert len(ids) == 4
        assert await history(stack) == {i: ["placed"] for i in ids}, "one set of GTTs, each placed once"
        assert stack.count(f"monitor@{other}", "safety net placed") == 0, "the standby made no GTT call"

        # A stop-loss change: modified once, by the keeper alone.
        resp = await stack.api("PATCH", "/api/v1/positions/BOSCHLTD", json={"stop_loss": 710})
        assert resp.status_code == 200, resp.text
        await eventually(lambda: _trigger_is(stack, "BOSCHLTD", 706.45), timeout_s=10)
        (bosch,) = nets["BOSCHLTD"]["gtt_ids"]
        assert (await history(stack))[bosch] == ["placed", "modified"]

        # The keeper dies; the other takes the lease within SAFETY_NET_LEASE_S and keeps the same GTTs.
        mark = stack.mark(f"monitor@{other}")
        stack.kill(f"monitor@{first}")
        killed_at = time.monotonic()
        line = f"Safety-net keeper: instance {other} keeps the safety nets"
        await stack.wait_log(f"monitor@{other}", line, since=mark, timeout_s=LEASE_S + 5)
        took_s = time.monotonic() - killed_at
        print(f"keeper takeover after {took_s:.2f} s")
        assert took_s < LEASE_S + 2, f"took over after {took_s:.1f}s"
        assert (await keeper_of(stack))["keeper"] == other
        assert (await stack.health())["safety_net_keeper"] == other
        resp = await stack.api("PATCH", "/api/v1/positions/BOSCHLTD", json={"stop_loss": 712})
        assert resp.status_code == 200, resp.text
        await eventually(lambda: _trigger_is(stack, "BOSCHLTD", 708.40), timeout_s=10)
        after = await history(stack)
        assert after[bosch] == ["placed", "modified", "modified"]
        assert set(after) == ids and all(after[i] == ["placed"] for i in nets[symbol]["gtt_ids"]), after

        # The guard's close disarms the option's three GTTs, each cancelled once.
        resp = await stack.emergency_close(symbol)
        assert resp.status_code in (200, 202), resp.text
        await eventually(lambda: _all_cancelled(stack, nets[symbol]["gtt_ids"]), timeout_s=15)
        await eventually(lambda: _flat(stack, option.instrument_key), timeout_s=15)
        final = await history(stack)
        assert all(final[i] == ["placed", "cancelled"] for i in nets[symbol]["gtt_ids"]), final


async def _trigger_is(stack: HAStack, symbol: str, trigger: float) -> bool:
    net = await net_of(stack, symbol)
    return net["state"] == "active" and net["trigger_price"] == trigger


async def _all_cancelled(stack: HAStack, ids: list[str]) -> bool:
    events = await history(stack)
    return all(events[i][-1] == "cancelled" for i in ids)


async def _flat(stack: HAStack, key: str) -> bool:
    rows = (await stack.sim("GET", "/sim/state"))["positions"]
    return [int(r["quantity"]) for r in rows if r["instrument_token"] == key] == [0]


async def test_a_keeper_paused_past_its_lease_makes_no_gtt_call_when_it_wakes(tmp_path: Path) -> None:
    """SIGSTOP the keeper past `SAFETY_NET_LEASE_S`: the other monitor takes the lease and modifies the GTT when
    the stop-loss moves; the old keeper, SIGCONTed, finds the lease gone, stands by and makes no call of its own
    (each change is made once)."""
    async with HAStack(tmp_path, **ENV) as stack:
        await stack.start("sim")
        await stack.start_instances(("monitor", "a"), ("monitor", "b"), ("api", "a"))
        await stack.set_price("BOSCHLTD", 735.0)
        await stack.open_position("BOSCHLTD", "long", 10, 735.0, stop_loss=698.25)
        await eventually(lambda: _trigger_is(stack, "BOSCHLTD", 694.75), timeout_s=20)
        first = (await keeper_of(stack))["keeper"]
        other = ({"a", "b"} - {first}).pop()
        (gtt_id,) = (await net_of(stack, "BOSCHLTD"))["gtt_ids"]

        marks = {i: stack.mark(f"monitor@{i}") for i in "ab"}
        stack.pause(f"monitor@{first}")
        await stack.wait_log(
            f"monitor@{other}", f"Safety-net keeper: instance {other} keeps", since=marks[other], timeout_s=LEASE_S + 5
        )
        resp = await stack.api("PATCH", "/api/v1/positions/BOSCHLTD", json={"stop_loss": 710})
        assert resp.status_code == 200, resp.text
        await eventually(lambda: _trigger_is(stack, "BOSCHLTD", 706.45), timeout_s=10)

        stack.resume(f"monitor@{first}")
        await stack.wait_log(f"monitor@{first}", f"instance {first} lost the keeper lease", since=marks[first])
        resp = await stack.api("PATCH", "/api/v1/positions/BOSCHLTD", json={"stop_loss": 712})
        assert resp.status_code == 200, resp.text
        await eventually(lambda: _trigger_is(stack, "BOSCHLTD", 708.40), timeout_s=10)
        assert (await history(stack)) == {gtt_id: ["placed", "modified", "modified"]}
        assert stack.count(f"monitor@{first}", "safety net modified", since=marks[first]) == 0
        assert (await keeper_of(stack))["keeper"] == other
