"""The simulator's GTT orders, as a client of the real Upstox would see them: validation, firing on the
simulator's own market with no client connected, the LIMIT order with its buffer, gaps, expiry, ip_block."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from libs.common.clock import ManualClock
from libs.common.settings import Settings
from services.sim.server import Simulator, running_simulator
from tests.helpers import eventually
from tests.sim.conftest import AUTH, BOSCH, sim_settings
from tests.sim.test_rest import assert_error

pytestmark = pytest.mark.integration


def gtt(**overrides: Any) -> dict[str, Any]:
    """A SINGLE stop for a long BOSCHLTD position: SELL 10 when the price falls to 700."""
    body: dict[str, Any] = {
        "type": "SINGLE",
        "quantity": 10,
        "product": "I",
        "instrument_token": BOSCH,
        "transaction_type": "SELL",
        "rules": [{"strategy": "ENTRY", "trigger_type": "BELOW", "trigger_price": 700.0}],
    }
    body.update(overrides)
    return body


async def place(rest: httpx.AsyncClient, **overrides: Any) -> str:
    response = await rest.post("/v3/order/gtt/place", json=gtt(**overrides))
    assert response.status_code == 200, response.text
    (gtt_id,) = response.json()["data"]["gtt_order_ids"]
    return str(gtt_id)


async def listed(rest: httpx.AsyncClient) -> list[dict[str, Any]]:
    return list((await rest.get("/v3/order/gtt")).json()["data"])


async def history_of(rest: httpx.AsyncClient, gtt_id: str) -> dict[str, Any]:
    return next(g for g in (await rest.get("/sim/gtt")).json() if g["gtt_order_id"] == gtt_id)


async def net(rest: httpx.AsyncClient) -> int:
    rows = (await rest.get("/v2/portfolio/short-term-positions")).json()["data"]
    return sum(int(r["quantity"]) for r in rows)


async def test_place_is_validated_like_upstox(sim: Simulator, rest: httpx.AsyncClient) -> None:
    sim.market.set_price("BOSCHLTD", 73500)
    entry = {"strategy": "ENTRY", "trigger_type": "BELOW", "trigger_price": 700.0}
    target = {"strategy": "TARGET", "trigger_type": "IMMEDIATE", "trigger_price": 800.0}
    bad = {
        "UDAPI1136": [gtt(rules=[]), gtt(rules=[entry, target]), gtt(type="MULTIPLE", rules=[entry])],
        "UDAPI1141": [gtt(type="MULTIPLE", rules=[target, {**target, "strategy": "STOPLOSS"}])],
        "UDAPI100036": [
            gtt(rules=[{**entry, "trigger_price": 740.0}]),  # BELOW but the price is already under it
            gtt(rules=[{**entry, "trigger_type": "ABOVE"}]),  # ABOVE but the price is already over it
            gtt(rules=[{**entry, "trigger_price": 700.01}]),  # off the 0.05 tick
            gtt(rules=[{**entry, "trigger_price": 600.0}]),  # outside the day's band
            gtt(product="CO"),
            gtt(type="OCO"),
            gtt(quantity=0),
            gtt(transaction_type="HOLD"),
            gtt(instrument_token="NSE_EQ|NOPE"),
            gtt(type="MULTIPLE", rules=[entry, entry]),
            gtt(type="MULTIPLE", rules=[entry, {**target, "trigger_type": "ABOVE"}]),
        ],
    }
    for code, bodies in bad.items():
        for body in bodies:
            assert_error(await rest.post("/v3/order/gtt/place", json=body), 400, code)
    assert await listed(rest) == [], "a refused GTT is not kept"
    gtt_id = await place(rest)
    assert gtt_id.startswith("GTT-CU")
    (row,) = (await rest.get("/v3/order/gtt", params={"gtt_order_id": gtt_id})).json()["data"]
    assert row["type"] == "SINGLE" and row["quantity"] == 10 and row["product"] == "I"
    assert row["instrument_token"] == BOSCH and len(str(row["created_at"])) == 16
    assert row["expires_at"] > row["created_at"]
    (rule,) = row["rules"]
    assert rule == {
        "strategy": "ENTRY", "status": "SCHEDULED", "message": None, "trigger_type": "BELOW", "trigger_price": 700.0,
        "transaction_type": "SELL", "order_id": None, "trailing_gap": None,
    }  # fmt: skip
    assert_error(await rest.get("/v3/order/gtt", params={"gtt_order_id": "GTT-CU0"}), 400, "UDAPI1134")
    no_token = await rest.post("/v3/order/gtt/place", json=gtt(), headers={"Authorization": "Bearer nope"})
    assert_error(no_token, 401, "UDAPI100050")


async def test_trigger_places_a_buffered_limit_linked_both_ways_and_the_gtt_vanishes(
    sim: Simulator, rest: httpx.AsyncClient
) -> None:
    sim.market.set_price("BOSCHLTD", 73500)
    await rest.post("/sim/trade", json={"symbol": "BOSCHLTD", "side": "buy", "quantity": 10})
    gtt_id = await place(rest)
    sim.market.set_price("BOSCHLTD", 69900)  # one step through the trigger, well inside the 1 % buffer
    assert await listed(rest) == [], "a completed GTT is no longer returned"
    assert_error(await rest.get("/v3/order/gtt", params={"gtt_order_id": gtt_id}), 400, "UDAPI1134")
    done = await history_of(rest, gtt_id)
    (rule,) = done["rules"]
    assert rule["status"] == "COMPLETED" and rule["order_id"]
    assert [h["event"] for h in done["history"]][:2] == ["placed", "ENTRY triggered"]
    order = (await rest.get("/v2/order/details", params={"order_id": rule["order_id"]})).json()["data"]
    assert order["order_ref_id"] == gtt_id and order["order_type"] == "LIMIT"
    assert order["price"] == 693.0, "limit = trigger 700 less the 1 % buffer, on the tick"
    assert order["status"] == "complete" and order["average_price"] == 699.0 and order["filled_quantity"] == 10
    assert await net(rest) == 0
    (trade,) = [t for t in (await rest.get("/v2/order/trades/get-trades-for-day")).json()["data"] if t["order_ref_id"]]
    assert trade["order_ref_id"] == gtt_id
    assert_error(await rest.request("DELETE", "/v3/order/gtt/cancel", json={"gtt_order_id": gtt_id}), 400, "UDAPI1135")


async def test_a_gap_through_the_limit_leaves_the_order_open_until_the_market_allows(
    sim: Simulator, rest: httpx.AsyncClient
) -> None:
    sim.market.set_price("BOSCHLTD", 73500)
    await rest.post("/sim/trade", json={"symbol": "BOSCHLTD", "side": "buy", "quantity": 10})
    gtt_id = await place(rest)
    sim.market.set_price("BOSCHLTD", 66500)  # gaps from 735 to 665, under the 693 limit
    (rule,) = (await history_of(rest, gtt_id))["rules"]
    order = (await rest.get("/v2/order/details", params={"order_id": rule["order_id"]})).json()["data"]
    assert order["status"] == "open" and order["pending_quantity"] == 10
    assert await net(rest) == 10, "nothing sold in the gap"
    sim.market.set_price("BOSCHLTD", 69400)
    order = (await rest.get("/v2/order/details", params={"order_id": rule["order_id"]})).json()["data"]
    assert order["status"] == "complete" and order["average_price"] == 694.0
    assert await net(rest) == 0


async def test_fires_on_the_simulators_own_market_with_no_client(settings: Settings) -> None:
    # A GTT one tick under the price: the random walk alone (no feed client, no control call) fires it.
    async with (
        running_simulator(sim_settings(settings, sim_seed=3)) as sim,
        httpx.AsyncClient(base_url=sim.rest_url, headers=AUTH, timeout=5) as rest,
    ):
        assert sim.feeder.accepted == 0, "no feed client"
        ltp = sim.market.ltp_paise(BOSCH) or 0
        one_tick_under = {"strategy": "ENTRY", "trigger_type": "BELOW", "trigger_price": (ltp - 5) / 100}
        gtt_id = await place(rest, rules=[one_tick_under])

        async def fired() -> bool:
            return bool((await history_of(rest, gtt_id))["rules"][0]["order_id"])

        await eventually(fired, timeout_s=20)


async def test_a_price_crossed_while_the_market_was_closed_fires_when_it_opens(
    sim: Simulator, rest: httpx.AsyncClient
) -> None:
    sim.market.set_price("BOSCHLTD", 73500)
    gtt_id = await place(rest)
    sim.market.force_status("NORMAL_CLOSE")
    sim.market.set_price("BOSCHLTD", 69900)
    assert (await history_of(rest, gtt_id))["rules"][0]["status"] == "SCHEDULED"
    sim.market.force_status(None)
    assert (await history_of(rest, gtt_id))["rules"][0]["status"] == "COMPLETED"


async def test_modify_and_cancel(sim: Simulator, rest: httpx.AsyncClient) -> None:
    sim.market.set_price("BOSCHLTD", 73500)
    gtt_id = await place(rest)
    rules = [{"strategy": "ENTRY", "trigger_type": "BELOW", "trigger_price": 710.0}]
    modify = {"gtt_order_id": gtt_id, "type": "SINGLE", "quantity": 5, "rules": rules}
    assert (await rest.put("/v3/order/gtt/modify", json=modify)).status_code == 200
    (row,) = await listed(rest)
    assert row["quantity"] == 5 and row["rules"][0]["trigger_price"] == 710.0
    wrong_side = {**modify, "rules": [{**rules[0], "trigger_price": 740.0}]}
    assert_error(await rest.put("/v3/order/gtt/modify", json=wrong_side), 400, "UDAPI100036")
    assert_error(await rest.put("/v3/order/gtt/modify", json={**modify, "gtt_order_id": "x"}), 400, "UDAPI1134")
    cancel = await rest.request("DELETE", "/v3/order/gtt/cancel", json={"gtt_order_id": gtt_id})
    assert cancel.status_code == 200 and cancel.json()["data"]["gtt_order_ids"] == [gtt_id]
    (row,) = await listed(rest)
    assert row["rules"][0]["status"] == "CANCELLED"
    sim.market.set_price("BOSCHLTD", 69000)
    assert (await history_of(rest, gtt_id))["rules"][0]["order_id"] is None, "a cancelled GTT never fires"
    assert_error(await rest.put("/v3/order/gtt/modify", json=modify), 400, "UDAPI1135")
    assert [h["event"] for h in (await history_of(rest, gtt_id))["history"]] == ["placed", "modified", "cancelled"]


async def test_ip_block_refuses_place_modify_cancel_but_not_reads(sim: Simulator, rest: httpx.AsyncClient) -> None:
    sim.market.set_price("BOSCHLTD", 73500)
    gtt_id = await place(rest)
    await rest.post("/sim/faults", json={"kind": "ip_block", "duration_s": 30})
    assert_error(await rest.post("/v3/order/gtt/place", json=gtt()), 403, "UDAPI1154")
    modify = {"gtt_order_id": gtt_id, "type": "SINGLE", "quantity": 5, "rules": gtt()["rules"]}
    assert_error(await rest.put("/v3/order/gtt/modify", json=modify), 403, "UDAPI1154")
    cancel = await rest.request("DELETE", "/v3/order/gtt/cancel", json={"gtt_order_id": gtt_id})
    assert_error(cancel, 403, "UDAPI1154")
    assert len(await listed(rest)) == 1
    sim.market.set_price("BOSCHLTD", 69900)  # the broker still fires it: the block is on calls, not on GTTs
    assert (await history_of(rest, gtt_id))["rules"][0]["status"] == "COMPLETED"


async def test_intraday_gtt_expires_at_the_end_of_its_day(settings: Settings) -> None:
    clock = ManualClock(1_767_000_000.0)  # 2025-12-29 14:50 IST
    async with (
        running_simulator(sim_settings(settings), clock=clock, auto_tick=False) as sim,
        httpx.AsyncClient(base_url=sim.rest_url, headers=AUTH, timeout=5) as rest,
    ):
        sim.market.set_price("BOSCHLTD", 73500)
        intraday = await place(rest)
        delivery = await place(rest, product="D")
        clock.advance(10 * 3600)  # past midnight IST
        sim.market.step()
        by_id = {g["gtt_order_id"]: g for g in await listed(rest)}
        assert by_id[intraday]["rules"][0]["status"] == "EXPIRED"
        assert by_id[delivery]["rules"][0]["status"] == "SCHEDULED"
        sim.market.set_price("BOSCHLTD", 69900)
        assert (await history_of(rest, intraday))["rules"][0]["order_id"] is None


async def test_multiple_arms_its_exit_legs_once_the_entry_fills_and_one_cancels_the_other(
    sim: Simulator, rest: httpx.AsyncClient
) -> None:
    sim.market.set_price("BOSCHLTD", 73500)
    rules = [
        {"strategy": "ENTRY", "trigger_type": "ABOVE", "trigger_price": 740.0},
        {"strategy": "TARGET", "trigger_type": "IMMEDIATE", "trigger_price": 780.0},
        {"strategy": "STOPLOSS", "trigger_type": "IMMEDIATE", "trigger_price": 720.0},
    ]
    gtt_id = await place(rest, type="MULTIPLE", transaction_type="BUY", rules=rules)
    (row,) = await listed(rest)
    assert [r["status"] for r in row["rules"]] == ["SCHEDULED", "PENDING", "PENDING"]
    assert [r["transaction_type"] for r in row["rules"]] == ["BUY", "SELL", "SELL"]
    sim.market.set_price("BOSCHLTD", 71500)  # the stop level before the entry: legs are not armed, nothing fires
    assert await net(rest) == 0
    sim.market.set_price("BOSCHLTD", 74000)  # entry fires and fills
    assert await net(rest) == 10
    sim.market.set_price("BOSCHLTD", 73900)
    (row,) = await listed(rest)
    assert [r["status"] for r in row["rules"]] == ["COMPLETED", "SCHEDULED", "SCHEDULED"]
    sim.market.set_price("BOSCHLTD", 71900)  # stop-loss leg fires; target cancelled
    assert await net(rest) == 0
    assert await listed(rest) == []
    statuses = [r["status"] for r in (await history_of(rest, gtt_id))["rules"]]
    assert statuses == ["COMPLETED", "CANCELLED", "COMPLETED"]


async def test_reply_lost_keeps_the_gtt_and_loses_the_answer(sim: Simulator, rest: httpx.AsyncClient) -> None:
    sim.market.set_price("BOSCHLTD", 73500)
    await rest.post("/sim/faults", json={"kind": "reply_lost", "duration_s": 30})
    lost = await rest.post("/v3/order/gtt/place", json=gtt())
    assert lost.status_code == 504
    (row,) = await listed(rest)
    assert row["rules"][0]["status"] == "SCHEDULED", "the GTT was placed all the same"
