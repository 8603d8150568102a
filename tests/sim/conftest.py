"""Fixtures for the simulator's tests: a running simulator on free loopback ports, and a raw feed client."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from google.protobuf.json_format import MessageToDict
from websockets.asyncio.client import ClientConnection, connect

from libs.common.proto import MarketDataFeedV3_pb2 as pb
from libs.common.settings import Settings
from services.sim.server import Simulator, running_simulator
from services.sim.settings import SimSettings

TOKEN = "sim-access-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
BOSCH = "NSE_EQ|INE323A01026"
KAYNES = "NSE_EQ|INE918Z01012"
NIFTY = "NSE_INDEX|Nifty 50"


def sim_settings(settings: Settings, **overrides: Any) -> SimSettings:
    """The test settings with the simulator's times compressed."""
    values: dict[str, Any] = {
        "sim_tick_interval_s": 0.05,
        "sim_ws_ping_interval_s": 0.2,
        "sim_order_rate_limit_per_s": 0,
        **overrides,
    }
    return SimSettings.of(settings, **values)


@pytest.fixture
async def sim(settings: Settings) -> AsyncIterator[Simulator]:
    async with running_simulator(sim_settings(settings)) as running:
        yield running


@pytest.fixture
async def rest(sim: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.rest_url, headers=AUTH, timeout=5) as client:
        yield client


async def authorize(rest: httpx.AsyncClient) -> str:
    response = await rest.get("/v3/feed/market-data-feed/authorize")
    assert response.status_code == 200, response.text
    return str(response.json()["data"]["authorized_redirect_uri"])


def request(method: str, keys: list[str], mode: str | None = "ltpc") -> bytes:
    data: dict[str, Any] = {"instrumentKeys": keys}
    if mode is not None:
        data["mode"] = mode
    return json.dumps({"guid": uuid.uuid4().hex, "method": method, "data": data}).encode()


async def recv_frame(ws: ClientConnection, timeout_s: float = 5.0) -> tuple[bytes, pb.FeedResponse]:
    import asyncio

    raw = await asyncio.wait_for(ws.recv(), timeout_s)
    assert isinstance(raw, bytes), "feed frames are binary"
    return raw, pb.FeedResponse.FromString(raw)


def as_dict(msg: pb.FeedResponse) -> dict[str, Any]:
    return MessageToDict(msg)


async def open_feed(rest: httpx.AsyncClient) -> ClientConnection:
    return await connect(await authorize(rest), open_timeout=5, ping_interval=None)
