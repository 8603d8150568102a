"""The simulator's Upstox REST endpoints over real loopback HTTP."""

from __future__ import annotations

import gzip
import json
from typing import Any

import httpx
import pytest

from libs.common.settings import Settings
from services.sim.server import Simulator, running_simulator
from tests.sim.conftest import AUTH, BOSCH, KAYNES, NIFTY, sim_settings

pytestmark = pytest.mark.integration


def order(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "quantity": 10,
        "product": "I",
        "validity": "DAY",
        "price": 0,
        "tag": "guard-close-BOSCHLTD",
        "instrument_token": BOSCH,
        "order_type": "MARKET",
        "transaction_type": "BUY",
        "disclosed_quantity": 0,
        "trigger_price": 0,
        "is_amo": False,
    }
    body.update(overrides)
    return body


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "error"
    err = body["errors"][0]
    assert err["error_code"] == code and err["errorCode"] == code
    assert {"message", "property_path", "invalid_value", "propertyPath", "invalidValue"} <= err.keys()
    return dict(err)


async def test_profile_accepts_the_token_and_rejects_others(rest: httpx.AsyncClient) -> None:
    ok = await rest.get("/v2/user/profile")
    assert ok.status_code == 200
    data = ok.json()["data"]
    assert ok.json()["status"] == "success" and data["broker"] == "UPSTOX" and data["is_active"] is True
    assert_error(await rest.get("/v2/user/profile", headers={"Authorization": "Bearer nope"}), 401, "UDAPI100050")
    missing = await rest.get("/v2/user/profile", headers={"Authorization": ""})
    assert_error(missing, 401, "UDAPI100050")
    assert_error(
        await rest.get("/v2/portfolio/short-term-positions", headers={"Authorization": "x"}), 401, "UDAPI100050"
    )


async def test_authorize_returns_both_key_styles_pointing_at_the_feeder(
    sim: Simulator, rest: httpx.AsyncClient
) -> None:
    body = (await rest.get("/v3/feed/market-data-feed/authorize")).json()
    uri = body["data"]["authorized_redirect_uri"]
    assert body["status"] == "success" and body["data"]["authorizedRedirectUri"] == uri
    assert uri.startswith(f"ws://127.0.0.1:{sim.feed_port}/market-data-feeder/v2/upstox-developer-api/feeds?requestId=")
    assert "&code=" in uri
    async with httpx.AsyncClient(base_url=f"http://localhost:{sim.rest_port}", headers=AUTH) as by_name:
        other = (await by_name.get("/v3/feed/market-data-feed/authorize")).json()["data"]["authorized_redirect_uri"]
    assert other.startswith(f"ws://localhost:{sim.feed_port}/") and other != uri


async def test_instrument_file_is_gzip_without_a_token(sim: Simulator) -> None:
    async with httpx.AsyncClient(base_url=sim.rest_url) as anonymous:
        response = await anonymous.get("/market-quote/instruments/exchange/complete.json.gz")
    assert response.status_code == 200 and response.headers["content-type"] == "application/gzip"
    rows = json.loads(gzip.decompress(response.content))
    keys = {r["instrument_key"] for r in rows}
    assert {BOSCH, KAYNES, NIFTY} <= keys and len(keys) >= 212


async def test_ltp_quote_keyed_by_segment_and_symbol(sim: Simulator, rest: httpx.AsyncClient) -> None:
    sim.market.set_price("BOSCHLTD", 57500)
    body = (await rest.get("/v2/market-quote/ltp", params={"instrument_key": f"{BOSCH},{NIFTY}"})).json()
    assert body["data"]["NSE_EQ:BOSCHLTD"] == {"last_price": 575.0, "instrument_token": BOSCH}
    assert body["data"]["NSE_INDEX:Nifty 50"]["instrument_token"] == NIFTY  # indices by name, as Upstox keys them


async def test_ltp_v3_in_the_real_shape_and_at_most_500_keys(sim: Simulator, rest: httpx.AsyncClient) -> None:
    sim.market.set_price("BOSCHLTD", 57500)
    body = (await rest.get("/v3/market-quote/ltp", params={"instrument_key": BOSCH})).json()
    row = body["data"]["NSE_EQ:BOSCHLTD"]
    assert (row["last_price"], row["instrument_token"], row["cp"]) == (575.0, BOSCH, 735.0)
    assert {"ltq", "volume"} <= set(row)
    too_many = ",".join([BOSCH] * 501)
    assert_error(await rest.get("/v3/market-quote/ltp", params={"instrument_key": too_many}), 400, "UDAPI100036")


async def test_market_order_fills_at_the_price_and_shows_in_details_book_and_positions(
    sim: Simulator, rest: httpx.AsyncClient
) -> None:
    sim.market.set_price("BOSCHLTD", 73500)
    v3 = await rest.post("/v3/order/place", json=order())
    assert v3.status_code == 200, v3.text
    body = v3.json()
    assert body["status"] == "success" and isinstance(body["metadata"]["latency"], int)
    (order_id,) = body["data"]["order_ids"]
    assert len(order_id) == 13 and order_id.isdigit()
    details = (await rest.get("/v2/order/details", params={"order_id": order_id})).json()["data"]
    assert details["status"] == "complete" and details["average_price"] == 735.0
    assert details["tag"] == "guard-close-BOSCHLTD" and details["filled_quantity"] == 10
    assert details["trading_symbol"] == "BOSCHLTD" and details["instrument_token"] == BOSCH

    sim.market.set_price("BOSCHLTD", 57500)
    v2 = await rest.post("/v2/order/place", json=order(transaction_type="SELL", quantity=4, tag=None))
    assert v2.status_code == 200 and set(v2.json()["data"]) == {"order_id"}
    book = (await rest.get("/v2/order/retrieve-all")).json()["data"]
    assert [o["tag"] for o in book] == ["guard-close-BOSCHLTD", None]

    (pos,) = (await rest.get("/v2/portfolio/short-term-positions")).json()["data"]
    assert pos["quantity"] == 6 and pos["last_price"] == 575.0 and pos["average_price"] == 735.0
    assert pos["realised"] == pytest.approx(4 * (575 - 735))
    assert pos["unrealised"] == pytest.approx(6 * (575 - 735))
    assert pos["pnl"] == pytest.approx(10 * (575 - 735))
    assert pos["trading_symbol"] == pos["tradingsymbol"] == "BOSCHLTD"

    control = (await rest.get("/sim/orders")).json()
    assert [o["order_id"] for o in control] == [order_id, v2.json()["data"]["order_id"]]


async def test_short_position_is_negative(sim: Simulator, rest: httpx.AsyncClient) -> None:
    sim.market.set_price("KAYNES", 20410)
    await rest.post("/v3/order/place", json=order(instrument_token=KAYNES, transaction_type="SELL", quantity=3))
    sim.market.set_price("KAYNES", 19776)
    (pos,) = (await rest.get("/v2/portfolio/short-term-positions")).json()["data"]
    assert pos["quantity"] == -3 and pos["average_price"] == 204.10
    assert pos["pnl"] == pytest.approx(3 * (204.10 - 197.76))


@pytest.mark.parametrize(
    ("overrides", "code", "path"),
    [
        ({"order_type": None}, "UDAPI1004", "order_type"),
        ({"order_type": "STOP"}, "UDAPI1056", "order_type"),
        ({"validity": None}, "UDAPI1007", "validity"),
        ({"validity": "GTC"}, "UDAPI1055", "validity"),
        ({"product": "OCO"}, "UDAPI100036", "product"),
        ({"transaction_type": "HOLD"}, "UDAPI100036", "transaction_type"),
        ({"quantity": 0}, "UDAPI100036", "quantity"),
        ({"quantity": "ten"}, "UDAPI100036", "quantity"),
        ({"instrument_token": "NSE_EQ|UNKNOWN"}, "UDAPI100036", "instrument_token"),
        ({"instrument_token": NIFTY}, "UDAPI100036", "instrument_token"),
        ({"is_amo": "no"}, "UDAPI100036", "is_amo"),
        ({"tag": "x" * 41}, "UDAPI100036", "tag"),
        ({"order_type": "LIMIT", "price": 735.03}, "UDAPI100036", "price"),
        ({"order_type": "LIMIT", "price": 0}, "UDAPI100036", "price"),
        ({"order_type": "SL-M", "trigger_price": 0}, "UDAPI100036", "trigger_price"),
    ],
)
async def test_order_validation_errors(
    rest: httpx.AsyncClient, overrides: dict[str, Any], code: str, path: str
) -> None:
    err = assert_error(await rest.post("/v3/order/place", json=order(**overrides)), 400, code)
    assert err["property_path"] == path == err["propertyPath"]
    assert (await rest.get("/v2/order/retrieve-all")).json()["data"] == []


async def test_limit_orders_band_rejection_rest_and_cross(sim: Simulator, rest: httpx.AsyncClient) -> None:
    sim.market.set_price("BOSCHLTD", 73500)
    out_of_band = await rest.post("/v3/order/place", json=order(order_type="LIMIT", price=900.0))
    oid = out_of_band.json()["data"]["order_ids"][0]
    details = (await rest.get("/v2/order/details", params={"order_id": oid})).json()["data"]
    assert details["status"] == "rejected" and "band" in details["status_message"]

    resting = await rest.post("/v3/order/place", json=order(order_type="LIMIT", price=730.0))
    rid = resting.json()["data"]["order_ids"][0]
    assert (await rest.get("/v2/order/details", params={"order_id": rid})).json()["data"]["status"] == "open"
    sim.market.set_price("BOSCHLTD", 72900)
    filled = (await rest.get("/v2/order/details", params={"order_id": rid})).json()["data"]
    assert filled["status"] == "complete" and filled["average_price"] == 729.0

    stop = await rest.post(
        "/v3/order/place", json=order(order_type="SL-M", trigger_price=700.0, transaction_type="SELL")
    )
    sid = stop.json()["data"]["order_ids"][0]
    assert (await rest.get("/v2/order/details", params={"order_id": sid})).json()["data"]["status"] == "trigger pending"
    sim.market.set_price("BOSCHLTD", 69800)
    assert (await rest.get("/v2/order/details", params={"order_id": sid})).json()["data"]["status"] == "complete"


async def test_unknown_order_id(rest: httpx.AsyncClient) -> None:
    assert_error(await rest.get("/v2/order/details", params={"order_id": "999"}), 400, "UDAPI100010")


async def test_v3_slices_above_freeze_quantity(rest: httpx.AsyncClient) -> None:
    sliced = await rest.post("/v3/order/place", json=order(quantity=250000, slice=True))
    assert len(sliced.json()["data"]["order_ids"]) == 3
    assert_error(await rest.post("/v3/order/place", json=order(quantity=2_600_001, slice=True)), 400, "UDAPI100036")


async def test_order_rate_limit(settings: Settings) -> None:
    async with (
        running_simulator(sim_settings(settings, sim_order_rate_limit_per_s=3), auto_tick=False) as sim,
        httpx.AsyncClient(base_url=sim.rest_url, headers=AUTH) as rest,
    ):
        codes = [(await rest.post("/v2/order/place", json=order())).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        assert_error(await rest.post("/v3/order/place", json=order()), 429, "UDAPI10005")
        assert (await rest.get("/v2/portfolio/short-term-positions")).status_code == 200
        assert len(sim.orders.orders) == 3


async def test_market_closed_rejects_regular_orders_and_queues_amo(sim: Simulator, rest: httpx.AsyncClient) -> None:
    assert (await rest.post("/sim/market", json={"status": "NORMAL_CLOSE"})).status_code == 200
    rejected = (await rest.post("/v3/order/place", json=order())).json()["data"]["order_ids"][0]
    amo = (await rest.post("/v3/order/place", json=order(is_amo=True))).json()["data"]["order_ids"][0]
    assert (await rest.get("/v2/order/details", params={"order_id": rejected})).json()["data"]["status"] == "rejected"
    amo_status = (await rest.get("/v2/order/details", params={"order_id": amo})).json()["data"]["status"]
    assert amo_status == "after market order req received"


async def test_rest_down_answers_503_but_control_still_works(sim: Simulator, rest: httpx.AsyncClient) -> None:
    assert (await rest.post("/sim/faults", json={"kind": "rest_down", "duration_s": 30})).status_code == 200
    assert_error(await rest.get("/v2/user/profile"), 503, "UDAPI100500")
    assert_error(await rest.post("/v3/order/place", json=order()), 503, "UDAPI100500")
    state = (await rest.get("/sim/state")).json()
    assert "rest_down" in state["faults"]
    assert (await rest.post("/sim/reset")).status_code == 200
    assert (await rest.get("/v2/user/profile")).status_code == 200


async def test_auth_fault_fails_authorize_with_401(rest: httpx.AsyncClient) -> None:
    await rest.post("/sim/faults", json={"kind": "auth", "duration_s": 30})
    assert_error(await rest.get("/v3/feed/market-data-feed/authorize"), 401, "UDAPI100050")


async def test_control_price_pin_release_and_reset(sim: Simulator, rest: httpx.AsyncClient) -> None:
    set_ = await rest.post("/sim/price", json={"symbol": "BOSCHLTD", "ltp": 575.0})
    assert set_.json() == {"symbol": "BOSCHLTD", "ltp": 575.0, "pinned": True}
    state = (await rest.get("/sim/state")).json()
    assert state["pinned"] == ["BOSCHLTD"] and state["prices"]["BOSCHLTD"] == 575.0
    assert (await rest.post("/sim/price", json={"symbol": "NOPE", "ltp": 1.0})).status_code == 404
    assert (await rest.post("/sim/price", json={"symbol": "BOSCHLTD", "release": True})).json()["pinned"] is False
    await rest.post("/sim/price", json={"symbol": "KAYNES", "ltp": 204.10})
    await rest.post("/sim/reset")
    state = (await rest.get("/sim/state")).json()
    assert state["pinned"] == [] and state["orders"] == 0 and state["prices"]["KAYNES"] == 195.0


async def test_control_halt_one_instrument(rest: httpx.AsyncClient) -> None:
    resp = await rest.post("/sim/instrument", json={"symbol": "BOSCHLTD", "halted": True})
    assert resp.json() == {"symbol": "BOSCHLTD", "halted": True}
    assert (await rest.get("/sim/state")).json()["halted"] == ["BOSCHLTD"]
    assert (await rest.post("/sim/instrument", json={"symbol": "NOPE", "halted": True})).status_code == 404
    assert (await rest.post("/sim/instrument", json={"symbol": "BOSCHLTD"})).status_code == 422
    await rest.post("/sim/instrument", json={"symbol": "BOSCHLTD", "halted": False})
    assert (await rest.get("/sim/state")).json()["halted"] == []
