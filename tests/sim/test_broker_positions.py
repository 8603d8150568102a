"""The simulator's broker positions and trades made outside the guard (`POST /sim/trade`)."""

from __future__ import annotations

import httpx
import pytest

from services.sim.server import Simulator
from tests.sim.conftest import BOSCH, KAYNES
from tests.sim.test_rest import order

pytestmark = pytest.mark.integration


async def positions(rest: httpx.AsyncClient) -> list[dict[str, object]]:
    body = (await rest.get("/v2/portfolio/short-term-positions")).json()
    assert body["status"] == "success"
    return list(body["data"])


async def test_trade_outside_the_guard_fills_at_the_price_and_moves_the_position(
    sim: Simulator, rest: httpx.AsyncClient
) -> None:
    sim.market.set_price("BOSCHLTD", 73500)
    bought = await rest.post("/sim/trade", json={"symbol": "BOSCHLTD", "side": "buy", "quantity": 10})
    assert bought.status_code == 200, bought.text
    assert bought.json()["order"]["status"] == "complete" and bought.json()["order"]["average_price"] == 735.0
    assert bought.json()["position"]["quantity"] == 10
    (row,) = await positions(rest)
    assert row["instrument_token"] == BOSCH and row["trading_symbol"] == "BOSCHLTD" and row["product"] == "I"
    assert row["quantity"] == 10 and row["day_buy_quantity"] == 10 and row["day_sell_quantity"] == 0
    assert row["average_price"] == 735.0 and {"pnl", "realised", "unrealised"} <= row.keys()
    # the trade is in the order book as the app's order would be (untagged)
    (booked,) = (await rest.get("/v2/order/retrieve-all")).json()["data"]
    assert booked["tag"] is None and booked["transaction_type"] == "BUY"


async def test_squared_off_position_stays_listed_with_quantity_zero(sim: Simulator, rest: httpx.AsyncClient) -> None:
    sim.market.set_price("BOSCHLTD", 73500)
    await rest.post("/sim/trade", json={"symbol": "BOSCHLTD", "side": "buy", "quantity": 10})
    sim.market.set_price("BOSCHLTD", 74000)
    sold = await rest.post("/v3/order/place", json=order(transaction_type="SELL", quantity=10))
    assert sold.status_code == 200
    (row,) = await positions(rest)
    assert row["quantity"] == 0 and row["day_buy_quantity"] == 10 and row["day_sell_quantity"] == 10
    assert row["realised"] == pytest.approx(10 * 5.0) and row["unrealised"] == 0


async def test_positions_are_per_product_and_short_selling_is_allowed(sim: Simulator, rest: httpx.AsyncClient) -> None:
    sim.market.set_price("KAYNES", 20410)
    short = await rest.post("/sim/trade", json={"symbol": "KAYNES", "side": "sell", "quantity": 3})
    assert short.status_code == 200 and short.json()["position"]["quantity"] == -3
    delivery = await rest.post("/sim/trade", json={"symbol": "KAYNES", "side": "buy", "quantity": 2, "product": "D"})
    assert delivery.status_code == 200
    rows = {(r["instrument_token"], r["product"]): r["quantity"] for r in await positions(rest)}
    assert rows == {(KAYNES, "I"): -3, (KAYNES, "D"): 2}


async def test_bad_trades_change_nothing(sim: Simulator, rest: httpx.AsyncClient) -> None:
    for body, status in (
        ({"symbol": "NOPE", "side": "buy", "quantity": 1}, 404),
        ({"symbol": "BOSCHLTD", "side": "hold", "quantity": 1}, 422),
        ({"symbol": "BOSCHLTD", "side": "buy", "quantity": 0}, 422),
        ({"symbol": "BOSCHLTD", "side": "buy", "quantity": 1, "product": "CO"}, 422),
    ):
        assert (await rest.post("/sim/trade", json=body)).status_code == status, body
    await rest.post("/sim/market", json={"status": "NORMAL_CLOSE"})
    closed = await rest.post("/sim/trade", json={"symbol": "BOSCHLTD", "side": "buy", "quantity": 1})
    assert closed.status_code == 409 and "closed" in closed.json()["detail"]
    assert await positions(rest) == []
