"""Load while faulting: 212 symbols ticking, 100 open positions, the feed dropped every few seconds.

The test drives a known price path (pinned prices) so it knows exactly which SL/TP must fire and which
must not: every crossing holds its price (so a crossing made during a drop is seen after the reconnect),
near misses come within 1 % of a level and go back. "For a minute" is compressed to ~30 s of path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

from libs.common.instruments import load_instruments
from tests.e2e.harness import Stack
from tests.helpers import eventually

pytestmark = pytest.mark.e2e

POSITIONS = 100
STEPS = 14
STEP_S = 1.5
DROP_EVERY_S = 4.0
DROP_S = 1.5


def _rupees(value: Decimal) -> float:
    return float(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def _plan() -> dict[str, dict[str, object]]:
    """Per symbol: group, entry, SL, TP and the price at each step of the path."""
    stocks = [i for i in load_instruments(0) if i.segment == "NSE_EQ"][:POSITIONS]
    plan: dict[str, dict[str, object]] = {}
    for n, inst in enumerate(stocks):
        p0 = Decimal(inst.close_price_paise) / 100
        group = ("sl", "tp", "near", "flat")[n % 4]
        cross_at = 1 + (n // 4) % (STEPS - 2)  # crossings spread over the whole path
        path = []
        for step in range(STEPS):
            wobble = Decimal("0.01") * (step % 3)  # stays well inside the levels
            if group == "sl":
                factor = Decimal("0.93") if step >= cross_at else 1 - wobble
            elif group == "tp":
                factor = Decimal("1.07") if step >= cross_at else 1 + wobble
            elif group == "near":
                factor = Decimal("0.96") if step % 2 else Decimal("1.04")  # 1 % short of SL / TP
            else:
                factor = Decimal(1)
            path.append(_rupees(p0 * factor))
        plan[inst.trading_symbol] = {
            "group": group,
            "entry": _rupees(p0),
            "stop_loss": _rupees(p0 * Decimal("0.95")),
            "take_profit": _rupees(p0 * Decimal("1.05")),
            "path": path,
        }
    return plan


async def test_sl_tp_fire_exactly_as_the_price_path_says_under_repeated_drops(tmp_path: Path) -> None:
    plan = _plan()
    assert len(plan) == POSITIONS and all(p["entry"] for p in plan.values())
    async with Stack(tmp_path, SIM_TICKS_PER_INTERVAL="212", SIM_TICK_INTERVAL_S="0.2") as stack:
        await stack.start("sim", "feed", "monitor", "api")
        limit = asyncio.Semaphore(8)

        async def open_one(symbol: str, p: dict[str, object]) -> None:
            async with limit:
                await stack.set_price(symbol, p["entry"])  # type: ignore[arg-type]
                await stack.open_position(
                    symbol,
                    "long",
                    1,
                    p["entry"],
                    stop_loss=p["stop_loss"],
                    take_profit=p["take_profit"],  # type: ignore[arg-type]
                )

        async def set_one(symbol: str, price: float) -> None:
            async with limit:
                await stack.set_price(symbol, price)

        await asyncio.gather(*(open_one(s, p) for s, p in plan.items()))
        health = await stack.wait_connected(True)
        assert health["websocket"]["subscribed_symbols"] >= 200
        assert len(await stack.store.open_symbols()) == POSITIONS

        async def faults() -> int:
            drops = 0
            while True:
                await asyncio.sleep(DROP_EVERY_S)  # the fault schedule itself
                await stack.fault("drop", DROP_S)
                drops += 1

        injector = asyncio.create_task(faults())
        try:
            last: dict[str, float] = {s: p["entry"] for s, p in plan.items()}  # type: ignore[misc]
            for step in range(STEPS):
                moves = {s: p["path"][step] for s, p in plan.items() if p["path"][step] != last[s]}  # type: ignore[index]
                await asyncio.gather(*(set_one(s, price) for s, price in moves.items()))
                last.update(moves)
                await asyncio.sleep(STEP_S)  # the price path's own pace
        finally:
            injector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await injector
        assert (await stack.sim_state())["fault_counts"]["drop"] >= 5

        must_fire = {s for s, p in plan.items() if p["group"] in ("sl", "tp")}
        await stack.wait_connected(True, timeout_s=30)

        async def all_fired() -> bool:
            return not must_fire & set(await stack.store.open_symbols())

        await eventually(all_fired, timeout_s=60, interval_s=0.5)
        # Settle: the final prices are live for every open position (nothing left to fire late).
        await eventually(lambda: _all_fresh(stack), timeout_s=20, interval_s=0.5)

        orders = await stack.orders()
        by_symbol: dict[str, list[dict[str, object]]] = {}
        for order in orders:
            by_symbol.setdefault(str(order["trading_symbol"]), []).append(order)
        assert set(by_symbol) == must_fire, sorted(set(by_symbol) ^ must_fire)  # none fired that should not
        assert all(len(rows) == 1 for rows in by_symbol.values()), {s: len(r) for s, r in by_symbol.items()}
        closes = await stack.closes()
        assert len(closes) == len(must_fire) == POSITIONS // 2
        for close in closes:
            expected = "stop_loss" if plan[close["symbol"]]["group"] == "sl" else "take_profit"
            assert close["reason"] == expected, close
        assert sorted(await stack.store.open_symbols()) == sorted(set(plan) - must_fire)
    print(json.dumps({"drops": len([1 for line in stack.lines("feed") if "connection closed" in line])}))


async def _all_fresh(stack: Stack) -> bool:
    health = await stack.health(limit="0")
    return (
        bool(health["websocket"]["connected"])
        and health["price_cache"]["open_positions"]["stale"] == 0
        and (health["price_cache"]["open_positions"]["expired"] == 0)
    )
