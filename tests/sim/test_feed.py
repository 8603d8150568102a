"""The WebSocket feeder, read by a raw `websockets` client decoding frames with our protobuf module."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from libs.common.proto import MarketDataFeedV3_pb2 as pb
from libs.common.settings import Settings
from services.sim.feeder import over_limit
from services.sim.server import Simulator, running_simulator
from tests.helpers import eventually
from tests.sim.conftest import (
    AUTH,
    BOSCH,
    KAYNES,
    NIFTY,
    as_dict,
    authorize,
    open_feed,
    recv_frame,
    request,
    sim_settings,
)

pytestmark = pytest.mark.integration


async def test_market_info_then_snapshot_without_type_then_live(rest: httpx.AsyncClient) -> None:
    async with await open_feed(rest) as ws:
        raw, first = await recv_frame(ws)
        assert first.type == pb.market_info and first.currentTs > 0
        info = as_dict(first)["marketInfo"]["segmentStatus"]
        assert info["NSE_EQ"] == "NORMAL_OPEN" and "NSE_INDEX" in info

        await ws.send(request("sub", [BOSCH, NIFTY]))
        raw, snap = await recv_frame(ws)
        assert raw[:1] != b"\x08", "the snapshot (initial_feed = 0) carries no type field"
        snapshot = as_dict(snap)
        assert "type" not in snapshot and int(snapshot["currentTs"]) > 0
        assert set(snapshot["feeds"]) == {BOSCH, NIFTY}
        assert snapshot["feeds"][BOSCH]["ltpc"]["cp"] == 735.0
        assert "ltq" not in snapshot["feeds"][NIFTY]["ltpc"]

        raw, live = await recv_frame(ws)
        assert raw[:2] == b"\x08\x01" and live.type == pb.live_feed and live.currentTs > 0
        assert set(live.feeds) <= {BOSCH, NIFTY} and live.feeds


async def test_sub_without_mode_is_ltpc_and_full_mode_payloads(sim: Simulator, rest: httpx.AsyncClient) -> None:
    async with await open_feed(rest) as ws:
        await recv_frame(ws)
        await ws.send(request("sub", [BOSCH], mode=None))
        _, snap = await recv_frame(ws)
        assert snap.feeds[BOSCH].WhichOneof("FeedUnion") == "ltpc"
        await ws.send(request("change_mode", [BOSCH, NIFTY], mode="full"))

        def full_snapshot(msg: pb.FeedResponse) -> bool:
            return msg.type == pb.initial_feed and BOSCH in msg.feeds

        while not full_snapshot(msg := (await recv_frame(ws))[1]):
            pass
        feed = as_dict(msg)["feeds"]
        assert feed[BOSCH]["requestMode"] == "full_d5"
        ff = feed[BOSCH]["fullFeed"]["marketFF"]
        assert len(ff["marketLevel"]["bidAskQuote"]) == 5 and ff["marketOHLC"]["ohlc"][0]["interval"] == "1d"
        assert "indexFF" in feed[NIFTY]["fullFeed"]

        await ws.send(request("sub", [KAYNES], mode="option_greeks"))
        while KAYNES not in (msg := (await recv_frame(ws))[1]).feeds or msg.type != pb.initial_feed:
            pass
        assert as_dict(msg)["feeds"][KAYNES]["requestMode"] == "option_greeks"
        assert msg.feeds[KAYNES].WhichOneof("FeedUnion") == "firstLevelWithGreeks"


async def test_price_control_sends_a_tick_at_once_and_unsub_stops_it(settings: Settings) -> None:
    async with (
        running_simulator(sim_settings(settings), auto_tick=False) as sim,
        httpx.AsyncClient(base_url=sim.rest_url, headers=AUTH) as rest,
        await open_feed(rest) as ws,
    ):
        await recv_frame(ws)
        await ws.send(request("sub", [BOSCH]))
        await recv_frame(ws)
        await rest.post("/sim/price", json={"symbol": "BOSCHLTD", "ltp": 575.0})
        _, live = await recv_frame(ws, timeout_s=2)
        assert live.type == pb.live_feed and live.feeds[BOSCH].ltpc.ltp == 575.0
        await ws.send(request("unsub", [BOSCH], mode=None))
        await eventually(lambda: not next(iter(sim.feeder.connections)).subs)
        await rest.post("/sim/price", json={"symbol": "BOSCHLTD", "ltp": 570.0})
        with pytest.raises(TimeoutError):
            await recv_frame(ws, timeout_s=0.3)


async def test_authorized_uri_is_single_use(rest: httpx.AsyncClient) -> None:
    uri = await authorize(rest)
    async with connect(uri) as ws:
        assert (await recv_frame(ws))[1].type == pb.market_info
    with pytest.raises(InvalidStatus) as refused:
        await connect(uri)
    assert refused.value.response.status_code == 401


async def test_redirect_style_connect_follows_307(sim: Simulator) -> None:
    url = f"ws://127.0.0.1:{sim.rest_port}/v3/feed/market-data-feed"
    async with connect(url, additional_headers=AUTH) as ws:
        assert (await recv_frame(ws))[1].type == pb.market_info
    with pytest.raises(InvalidStatus) as bad:
        await connect(url, additional_headers={"Authorization": "Bearer wrong"})
    assert bad.value.response.status_code == 401


async def test_redirect_answer_is_a_307_to_the_feeder(sim: Simulator) -> None:
    import base64
    import os

    headers = {
        **AUTH,
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    }
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{sim.rest_url}/v3/feed/market-data-feed", headers=headers)
    assert response.status_code == 307
    assert response.headers["location"].startswith(f"ws://127.0.0.1:{sim.feed_port}/market-data-feeder/")


async def test_server_pings_an_idle_connection(sim: Simulator, rest: httpx.AsyncClient) -> None:
    async with await open_feed(rest) as ws:
        await recv_frame(ws)
        # The client answers pings automatically; the server measures latency from the pong.
        await eventually(lambda: any(c.ws.latency > 0 for c in sim.feeder.connections), timeout_s=3)
        assert ws.state.name == "OPEN"


async def test_status_change_sends_market_info_and_stops_live_ticks(sim: Simulator, rest: httpx.AsyncClient) -> None:
    async with await open_feed(rest) as ws:
        await recv_frame(ws)
        await ws.send(request("sub", [i.instrument_key for i in sim.instruments]))
        await recv_frame(ws)
        await rest.post("/sim/market", json={"status": "NORMAL_CLOSE"})
        while (msg := (await recv_frame(ws))[1]).type != pb.market_info:
            pass
        assert as_dict(msg)["marketInfo"]["segmentStatus"]["NSE_EQ"] == "NORMAL_CLOSE"
        with pytest.raises(TimeoutError):
            await recv_frame(ws, timeout_s=0.4)
        await rest.post("/sim/market", json={"status": None})
        while (msg := (await recv_frame(ws))[1]).type != pb.live_feed:
            pass


async def test_limits_ignore_an_over_limit_request(sim: Simulator, rest: httpx.AsyncClient) -> None:
    assert over_limit(dict.fromkeys(range(5000), "ltpc")) is None
    assert over_limit(dict.fromkeys(range(5001), "ltpc")) is not None
    assert over_limit({**dict.fromkeys(range(2001), "ltpc"), 9999: "full"}) is not None
    assert over_limit(dict.fromkeys(range(2001), "full")) is not None
    async with await open_feed(rest) as ws:
        await recv_frame(ws)
        await ws.send(request("sub", [BOSCH]))
        await recv_frame(ws)
        # 1,500 full keys already (planted), plus 5 more next to an ltpc key: over the combined limit.
        conn = next(iter(sim.feeder.connections))
        conn.subs.update({i + 10_000: "full" for i in range(1500)})
        others = [i.instrument_key for i in sim.instruments if i.instrument_key != BOSCH][:5]
        await ws.send(request("sub", others, mode="full"))
        await eventually(lambda: conn.requests == 2)
        assert conn.mode_counts()["ltpc"] == 1 and conn.mode_counts()["full"] == 1500


async def test_5000_synthetic_symbols_subscribe_and_tick(settings: Settings) -> None:
    cfg = sim_settings(settings, sim_extra_instruments=5000, sim_ticks_per_interval=2000)
    async with (
        running_simulator(cfg) as sim,
        httpx.AsyncClient(base_url=sim.rest_url, headers=AUTH) as rest,
        await open_feed(rest) as ws,
    ):
        await recv_frame(ws)
        keys = [f"NSE_EQ|SIMEQ{i:04d}" for i in range(1, 5001)]
        await ws.send(request("sub", keys))
        _, snap = await recv_frame(ws)
        assert len(snap.feeds) == 5000
        seen = 0
        loop = asyncio.get_running_loop()
        started = loop.time()
        while loop.time() - started < 1.0:
            seen += len((await recv_frame(ws))[1].feeds)
        assert seen > 5000
