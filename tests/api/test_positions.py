from __future__ import annotations

import time

import httpx
import pytest
from redis.asyncio import Redis

from libs.common import keys
from tests.api.conftest import BOSCH, write_prices

pytestmark = pytest.mark.integration

POSITIONS = "/api/v1/positions"


async def test_open_registers_subscribes_and_reads_back(client: httpx.AsyncClient, redis: Redis) -> None:
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.SUBSCRIPTION_REQUESTS_CHANNEL)
    await write_prices(redis, time.time() - 2, {"BOSCHLTD": "720.00"})
    body = {k: v for k, v in BOSCH.items() if k != "instrument_key"}  # looked up from the instrument list

    resp = await client.post(POSITIONS, json={**body, "take_profit": 800})

    assert resp.status_code == 201, resp.text
    assert resp.headers["Location"] == "/api/v1/positions/BOSCHLTD"
    out = resp.json()
    assert out["instrument_key"] == "NSE_EQ|INE323A01026"
    assert (out["entry_price"], out["stop_loss"], out["take_profit"], out["state"]) == (735.0, 698.25, 800.0, "open")
    assert out["opened_at"].endswith("+05:30")
    assert (out["ltp"], out["unrealized_pnl"]) == (720.0, -150.0)
    assert await redis.hget(keys.FEED_SUBSCRIPTIONS, "BOSCHLTD") == "NSE_EQ|INE323A01026"
    message = None
    for _ in range(20):
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message:
            break
    assert message is not None
    assert message["data"] == "sub BOSCHLTD NSE_EQ|INE323A01026"
    await pubsub.aclose()

    listed = (await client.get(POSITIONS)).json()
    assert [p["symbol"] for p in listed["positions"]] == ["BOSCHLTD"]
    assert listed["malformed"] == []
    one = (await client.get(f"{POSITIONS}/BOSCHLTD")).json()
    assert one["stop_loss"] == 698.25


@pytest.mark.parametrize(
    ("side", "sl_pct", "tp_pct", "levels"),
    [("long", 5, 10, (698.25, 808.5)), ("short", 5, 10, (771.75, 661.5))],
)
async def test_levels_as_percentages_of_entry(
    client: httpx.AsyncClient, side: str, sl_pct: float, tp_pct: float, levels: tuple[float, float]
) -> None:
    body = {**BOSCH, "side": side, "stop_loss": None, "stop_loss_pct": sl_pct, "take_profit_pct": tp_pct}
    resp = await client.post(POSITIONS, json=body)
    assert resp.status_code == 201, resp.text
    assert (resp.json()["stop_loss"], resp.json()["take_profit"]) == levels


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"stop_loss": 740.0}, "stop_loss must be below entry_price for a long"),
        ({"take_profit": 700.0}, "take_profit must be above entry_price for a long"),
        ({"stop_loss_pct": 5}, "give either stop_loss or stop_loss_pct, not both"),
        ({"quantity": 0}, "quantity: Input should be greater than 0"),
        ({"colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"symbol": "NOTLISTED", "instrument_key": None}, "unknown symbol NOTLISTED: give its instrument_key"),
    ],
)
async def test_invalid_positions_are_422_with_a_readable_message(
    client: httpx.AsyncClient, changes: dict[str, object], words: str
) -> None:
    resp = await client.post(POSITIONS, json={**BOSCH, **changes})
    assert resp.status_code == 422
    assert words in resp.json()["message"]


async def test_a_second_open_is_409(client: httpx.AsyncClient) -> None:
    assert (await client.post(POSITIONS, json=BOSCH)).status_code == 201
    again = await client.post(POSITIONS, json=BOSCH)
    assert again.status_code == 409
    assert again.json()["detail"] == "a position on BOSCHLTD is already open"


async def test_patch_moves_levels_until_closed(client: httpx.AsyncClient, redis: Redis) -> None:
    assert (await client.patch(f"{POSITIONS}/BOSCHLTD", json={"stop_loss": 700})).status_code == 404
    await client.post(POSITIONS, json=BOSCH)
    moved = await client.patch(f"{POSITIONS}/BOSCHLTD", json={"stop_loss": 710, "take_profit_pct": 10})
    assert moved.status_code == 200, moved.text
    assert (moved.json()["stop_loss"], moved.json()["take_profit"]) == (710.0, 808.5)
    assert (await redis.hgetall(keys.position("BOSCHLTD")))["stop_loss"] == "710.00"

    wrong_side = await client.patch(f"{POSITIONS}/BOSCHLTD", json={"stop_loss": 750})
    assert wrong_side.status_code == 422
    assert "stop_loss must be below entry_price" in wrong_side.json()["message"]
    assert (await client.patch(f"{POSITIONS}/BOSCHLTD", json={})).status_code == 422

    await write_prices(redis, time.time(), {"BOSCHLTD": "705.00"})
    closed = await client.post(
        "/api/v1/monitoring/emergency-close-position", json={"symbol": "BOSCHLTD", "reason": "stop_loss"}
    )
    assert closed.status_code == 200
    late = await client.patch(f"{POSITIONS}/BOSCHLTD", json={"stop_loss": 700})
    assert late.status_code == 409
    assert (await client.get(f"{POSITIONS}/BOSCHLTD")).json()["state"] == "closed"
    assert (await client.get(POSITIONS)).json()["positions"] == []


async def test_closed_journal_newest_first(client: httpx.AsyncClient, redis: Redis) -> None:
    await write_prices(redis, time.time(), {"BOSCHLTD": "750.00", "KAYNES": "204.10"})
    await client.post(POSITIONS, json=BOSCH)
    kaynes = {**BOSCH, "symbol": "KAYNES", "instrument_key": None, "entry_price": 190.0, "stop_loss": 180.0}
    assert (await client.post(POSITIONS, json=kaynes)).status_code == 201
    for symbol, reason in (("BOSCHLTD", "take_profit"), ("KAYNES", "emergency")):
        body = {"symbol": symbol, "reason": reason}
        resp = await client.post("/api/v1/monitoring/emergency-close-position", json=body)
        assert resp.status_code == 200

    journal = (await client.get(f"{POSITIONS}/closed")).json()
    assert [(c["symbol"], c["reason"], c["pnl"]) for c in journal["closes"]] == [
        ("KAYNES", "emergency", 141.0),
        ("BOSCHLTD", "take_profit", 150.0),
    ]
    assert journal["closes"][0]["closed_at"].endswith("+05:30")
    assert len((await client.get(f"{POSITIONS}/closed", params={"limit": 1})).json()["closes"]) == 1
    assert (await client.get(f"{POSITIONS}/closed", params={"limit": 0})).status_code == 422


async def test_unknown_position_is_404(client: httpx.AsyncClient) -> None:
    resp = await client.get(f"{POSITIONS}/NOSUCH")
    assert resp.status_code == 404
    assert resp.json() == {"detail": "no position for NOSUCH"}
