"""Simulator tokens with lifetimes (03:30 IST on the simulator's clock, `expires_in_s`), analytics tokens limited
to market data, the OAuth dialog + exchange, and the access-token request that POSTs the notifier."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pydantic import SecretStr

from libs.common.clock import IST, ManualClock
from libs.common.credentials import token_exp
from libs.common.settings import Settings
from services.sim.server import Simulator, running_simulator
from tests.helpers import eventually
from tests.sim.conftest import BOSCH, sim_settings

pytestmark = pytest.mark.integration

CLIENT = {"upstox_client_id": "sim-client-1", "upstox_redirect_uri": "http://127.0.0.1:5999/callback"}
ORDER = {
    "quantity": 1,
    "product": "I",
    "validity": "DAY",
    "price": 0,
    "instrument_token": BOSCH,
    "order_type": "MARKET",
    "transaction_type": "BUY",
    "disclosed_quantity": 0,
    "trigger_price": 0,
    "is_amo": False,
}


def ist(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=IST).timestamp()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(ist("2026-12-03 15:00"))


@pytest.fixture
async def tsim(settings: Settings, clock: ManualClock) -> AsyncIterator[Simulator]:
    s = sim_settings(settings, upstox_client_secret=SecretStr("sim-secret-1"), **CLIENT)
    async with running_simulator(s, clock=clock) as running:
        yield running


async def issue(http: httpx.AsyncClient, kind: str, **kw: Any) -> str:
    resp = await http.post("/sim/tokens", json={"kind": kind, **kw})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["access_token"])


async def calls(http: httpx.AsyncClient, token: str) -> dict[str, int]:
    """The status of one call of each kind with `token`."""
    auth = {"Authorization": f"Bearer {token}"}
    return {
        "profile": (await http.get("/v2/user/profile", headers=auth)).status_code,
        "positions": (await http.get("/v2/portfolio/short-term-positions", headers=auth)).status_code,
        "order": (await http.post("/v3/order/place", headers=auth, json=ORDER)).status_code,
        "authorize": (await http.get("/v3/feed/market-data-feed/authorize", headers=auth)).status_code,
        "ltp": (await http.get("/v3/market-quote/ltp", headers=auth, params={"instrument_key": BOSCH})).status_code,
    }


async def test_an_access_token_dies_at_0330_ist_on_the_simulated_clock(tsim: Simulator, clock: ManualClock) -> None:
    async with httpx.AsyncClient(base_url=tsim.rest_url, timeout=5) as http:
        token = await issue(http, "access")
        assert token_exp(token) == ist("2026-12-04 03:30")  # the guard reads the expiry from the token itself
        assert set((await calls(http, token)).values()) == {200}
        clock.advance(ist("2026-12-04 03:29") - clock.now())
        assert (await http.get("/v2/user/profile", headers={"Authorization": f"Bearer {token}"})).status_code == 200
        clock.advance(120)  # 03:31 IST
        assert set((await calls(http, token)).values()) == {401}
        body = (await http.get("/v2/user/profile", headers={"Authorization": f"Bearer {token}"})).json()
        assert body["errors"][0]["error_code"] == "UDAPI100050"
        # the fixed simulator token never expires
        assert (await calls(http, tsim.token))["profile"] == 200


async def test_expires_in_s_and_analytics_tokens_only_read_market_data(tsim: Simulator, clock: ManualClock) -> None:
    async with httpx.AsyncClient(base_url=tsim.rest_url, timeout=5) as http:
        short = await issue(http, "access", expires_in_s=60)
        analytics = await issue(http, "analytics")
        assert await calls(http, analytics) == {
            "profile": 401,
            "positions": 401,
            "order": 401,
            "authorize": 200,
            "ltp": 200,
        }
        assert (await calls(http, short))["order"] == 200
        clock.advance(61)
        assert set((await calls(http, short)).values()) == {401}
        clock.advance(86400 * 30)  # an analytics token outlives many 03:30s
        assert (await calls(http, analytics))["authorize"] == 200
        assert (await http.post("/sim/tokens", json={"kind": "refresh"})).status_code == 422
        assert len((await http.get("/sim/orders")).json()) == 1  # only the live access token's order
        other = await issue(http, "access")
        auth = {"Authorization": f"Bearer {other}"}
        assert (await http.delete("/v2/logout", headers=auth)).json() == {"status": "success", "data": True}
        assert (await http.get("/v2/user/profile", headers=auth)).status_code == 401


async def test_oauth_dialog_and_token_exchange(tsim: Simulator) -> None:
    async with httpx.AsyncClient(base_url=tsim.rest_url, timeout=5) as http:
        query = {"response_type": "code", "client_id": "sim-client-1", "redirect_uri": CLIENT["upstox_redirect_uri"]}
        resp = await http.get("/v2/login/authorization/dialog", params={**query, "state": "s-42"})
        assert resp.status_code == 302
        target = urlsplit(resp.headers["location"])
        assert f"http://{target.netloc}{target.path}" == CLIENT["upstox_redirect_uri"]
        params = {k: v[0] for k, v in parse_qs(target.query).items()}
        assert params["state"] == "s-42"
        form = {
            "code": params["code"],
            "client_id": "sim-client-1",
            "client_secret": "sim-secret-1",
            "redirect_uri": CLIENT["upstox_redirect_uri"],
            "grant_type": "authorization_code",
        }
        wrong = await http.post("/v2/login/authorization/token", data={**form, "client_secret": "nope"})
        assert wrong.status_code == 401
        resp = await http.post("/v2/login/authorization/token", data=form)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["user_id"] == "SIM001" and "data" not in body  # unwrapped, as Upstox answers
        assert (await calls(http, body["access_token"]))["profile"] == 200
        again = await http.post("/v2/login/authorization/token", data=form)  # a code is single-use
        assert again.status_code == 401 and again.json()["errors"][0]["error_code"] == "UDAPI100057"
        bad_client = await http.get("/v2/login/authorization/dialog", params={**query, "client_id": "other"})
        assert bad_client.status_code == 401


async def test_token_request_is_approved_and_posted_to_the_notifier(settings: Settings) -> None:
    received: list[dict[str, Any]] = []

    async def notifier(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        fields = (line.partition(b":") for line in head.split(b"\r\n"))
        length = next(int(v) for k, _, v in fields if k.lower() == b"content-length")
        received.append(json.loads(await reader.readexactly(length)))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(notifier, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    s = sim_settings(
        settings,
        upstox_client_secret=SecretStr("sim-secret-1"),
        sim_notifier_url=f"http://127.0.0.1:{port}/hook",
        **CLIENT,
    )
    async with server, running_simulator(s) as sim, httpx.AsyncClient(base_url=sim.rest_url, timeout=5) as http:
        wrong = await http.post("/v3/login/auth/token/request/sim-client-1", json={"client_secret": "nope"})
        assert wrong.status_code == 401
        resp = await http.post("/v3/login/auth/token/request/sim-client-1", json={"client_secret": "sim-secret-1"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["data"]["notifier_url"] == f"http://127.0.0.1:{port}/hook"
        await eventually(lambda: len(received) == 1, timeout_s=5)
        note = received[0]
        assert note["client_id"] == "sim-client-1" and note["message_type"] == "access_token"
        assert note["token_type"] == "Bearer" and note["expires_at"].isdigit()
        assert (await calls(http, note["access_token"]))["profile"] == 200
