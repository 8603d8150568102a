"""The simulator's order lifecycle and order faults, as a client of the real Upstox would see them."""

from __future__ import annotations

import time

import httpx
import pytest

from libs.common.settings import Settings
from services.sim.server import Simulator, running_simulator
from tests.helpers import eventually
from tests.sim.conftest import AUTH, sim_settings
from tests.sim.test_rest import assert_error, order

pytestmark = pytest.mark.integration


async def details(rest: httpx.AsyncClient, order_id: str) -> dict[str, object]:
    return dict((await rest.get("/v2/order/details", params={"order_id": order_id})).json()["data"])


async def net(rest: httpx.AsyncClient) -> int:
    rows = (await rest.get("/v2/portfolio/short-term-positions")).json()["data"]
    return sum(int(r["quantity"]) for r in rows)


async def test_history_walks_the_statuses_and_trades_list_the_fill(sim: Simulator, rest: httpx.AsyncClient) -> None:
    sim.market.set_price("BOSCHLTD", 73500)
    oid = (await rest.post("/v3/order/place", json=order(market_protection=-1))).json()["data"]["order_ids"][0]
    stages = (await rest.get("/v2/order/history", params={"order_id": oid})).json()["data"]
    assert [s["status"] for s in stages] == [
        "put order req received", "validation pending", "open pending", "open", "complete"
    ]  # fmt: skip
    assert stages[0]["pending_quantity"] == 10 and stages[-1]["filled_quantity"] == 10
    by_tag = (await rest.get("/v2/order/history", params={"tag": "guard-close-BOSCHLTD"})).json()["data"]
    assert by_tag == stages
    (trade,) = (await rest.get("/v2/order/trades/get-trades-for-day")).json()["data"]
    assert trade["order_id"] == oid and trade["quantity"] == 10 and trade["average_price"] == 735.0


async def test_market_protection_is_validated(rest: httpx.AsyncClient) -> None:
    assert (await rest.post("/v3/order/place", json=order(market_protection=5))).status_code == 200
    assert_error(await rest.post("/v3/order/place", json=order(market_protection=30)), 400, "UDAPI100036")
    limit = order(order_type="LIMIT", price=735.0, market_protection=5)
    assert_error(await rest.post("/v3/order/place", json=limit), 400, "UDAPI100036")


async def test_partial_fill_fills_the_ratio_and_cancels_the_rest(sim: Simulator, rest: httpx.AsyncClient) -> None:
    await rest.post("/sim/faults", json={"kind": "partial_fill", "duration_s": 30, "ratio": 0.4})
    oid = (await rest.post("/v3/order/place", json=order(quantity=100))).json()["data"]["order_ids"][0]
    got = await details(rest, oid)
    assert got["status"] == "cancelled" and got["filled_quantity"] == 40 and got["pending_quantity"] == 0
    assert "remaining 60 cancelled" in str(got["status_message"])
    assert await net(rest) == 40
    # a trade outside the guard is never faulted
    await rest.post("/sim/trade", json={"symbol": "BOSCHLTD", "side": "buy", "quantity": 10})
    assert await net(rest) == 50


async def test_slow_fill_rests_open_then_fills(sim: Simulator, rest: httpx.AsyncClient) -> None:
    await rest.post("/sim/faults", json={"kind": "slow_fill", "duration_s": 30, "delay_s": 0.5})
    started = time.monotonic()
    oid = (await rest.post("/v3/order/place", json=order())).json()["data"]["order_ids"][0]
    got = await details(rest, oid)
    assert got["status"] == "open" and got["pending_quantity"] == 10 and got["filled_quantity"] == 0
    assert await net(rest) == 0

    async def complete() -> bool:
        return (await details(rest, oid))["status"] == "complete"

    await eventually(complete, timeout_s=5)
    assert time.monotonic() - started >= 0.5 and await net(rest) == 10


async def test_reply_lost_places_the_order_but_answers_504(sim: Simulator, rest: httpx.AsyncClient) -> None:
    await rest.post("/sim/faults", json={"kind": "reply_lost", "duration_s": 30})
    lost = await rest.post("/v3/order/place", json=order(tag="guard-close-lost"))
    assert lost.status_code == 504
    (placed,) = (await rest.get("/v2/order/retrieve-all")).json()["data"]
    assert placed["tag"] == "guard-close-lost" and placed["status"] == "complete" and await net(rest) == 10


async def test_reject_and_ip_block(sim: Simulator, rest: httpx.AsyncClient) -> None:
    await rest.post("/sim/faults", json={"kind": "reject", "duration_s": 30, "message": "Insufficient margin"})
    oid = (await rest.post("/v3/order/place", json=order())).json()["data"]["order_ids"][0]
    got = await details(rest, oid)
    assert got["status"] == "rejected" and got["status_message"] == "Insufficient margin" and await net(rest) == 0

    await rest.post("/sim/reset")
    await rest.post("/sim/faults", json={"kind": "ip_block", "duration_s": 30})
    err = assert_error(await rest.post("/v3/order/place", json=order()), 403, "UDAPI1154")
    assert err["message"] == "Access to this API is blocked due to static IP restrictions."
    assert_error(await rest.delete("/v2/order/cancel", params={"order_id": "1"}), 403, "UDAPI1154")
    # reads are not restricted
    assert (await rest.get("/v2/portfolio/short-term-positions")).status_code == 200
    ips = (await rest.get("/v2/user/ip")).json()["data"]
    assert ips["primary_ip"] == "127.0.0.1" and "secondary_ip" in ips
    assert sim.orders.orders == {}


async def test_required_algo_name_and_per_minute_window(settings: Settings) -> None:
    tuned = sim_settings(settings, sim_require_algo_name="my-algo", sim_order_rate_limit_per_min=3)
    async with (
        running_simulator(tuned, auto_tick=False) as sim,
        httpx.AsyncClient(base_url=sim.rest_url, headers=AUTH) as rest,
    ):
        assert_error(await rest.post("/v3/order/place", json=order()), 400, "UDAPI1156")
        wrong = await rest.post("/v3/order/place", json=order(), headers={"X-Algo-Name": "other"})
        assert_error(wrong, 400, "UDAPI1156")
        named = {"X-Algo-Name": "my-algo"}
        codes = [(await rest.post("/v3/order/place", json=order(), headers=named)).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        assert len(sim.orders.orders) == 3


async def test_cancel_of_a_resting_order_and_of_a_finished_one(sim: Simulator, rest: httpx.AsyncClient) -> None:
    sim.market.set_price("BOSCHLTD", 73500)
    resting = await rest.post("/v3/order/place", json=order(order_type="LIMIT", price=700.0))
    oid = resting.json()["data"]["order_ids"][0]
    assert (await rest.delete("/v3/order/cancel", params={"order_id": oid})).status_code == 200
    assert (await details(rest, oid))["status"] == "cancelled"
    assert_error(await rest.delete("/v3/order/cancel", params={"order_id": oid}), 400, "UDAPI100040")
