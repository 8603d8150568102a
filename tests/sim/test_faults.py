"""Every fault kind, observed from the client side."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK, InvalidStatus

from libs.common.proto import MarketDataFeedV3_pb2 as pb
from services.sim.server import Simulator
from tests.helpers import eventually
from tests.sim.conftest import AUTH, BOSCH, authorize, open_feed, recv_frame, request
from tests.sim.test_rest import order

pytestmark = pytest.mark.integration


async def _subscribed(rest: httpx.AsyncClient):  # type: ignore[no-untyped-def]
    ws = await open_feed(rest)
    await recv_frame(ws)
    await ws.send(request("sub", [BOSCH]))
    await recv_frame(ws)
    return ws


async def until_closed(ws: ClientConnection) -> ConnectionClosed:
    """Read frames until the connection ends; return how it ended."""
    while True:
        try:
            await recv_frame(ws)
        except ConnectionClosed as exc:
            return exc


async def test_drop_aborts_without_close_frame_and_refuses_then_recovers(
    sim: Simulator, rest: httpx.AsyncClient
) -> None:
    ws = await _subscribed(rest)
    await rest.post("/sim/faults", json={"kind": "drop", "duration_s": 0.8})
    closed = await until_closed(ws)
    assert isinstance(closed, ConnectionClosedError) and closed.rcvd is None, "no close frame on a drop"
    uri = await authorize(rest)  # REST still answers; the feeder refuses connections
    with pytest.raises(ConnectionRefusedError):
        await connect(uri, open_timeout=2)

    async def reconnects() -> bool:
        try:
            async with connect(await authorize(rest), open_timeout=2) as again:
                return (await recv_frame(again))[1].type == pb.market_info
        except OSError:
            return False

    assert await eventually(reconnects, timeout_s=5)


@pytest.mark.parametrize("code", [1000, 1011])
async def test_close_sends_a_close_frame_with_the_code(sim: Simulator, rest: httpx.AsyncClient, code: int) -> None:
    ws = await _subscribed(rest)
    await rest.post("/sim/faults", json={"kind": "close", "duration_s": 0.5, "code": code})
    expected = ConnectionClosedOK if code == 1000 else ConnectionClosedError
    closed = await until_closed(ws)
    assert isinstance(closed, expected) and closed.rcvd is not None and closed.rcvd.code == code
    # During the window a new connection is closed at once with the same code.
    async with connect(await authorize(rest)) as again:
        with pytest.raises(ConnectionClosed) as also:
            await recv_frame(again)
        assert also.value.rcvd is not None and also.value.rcvd.code == code


async def test_mute_keeps_the_socket_open_with_pings_but_sends_no_data(sim: Simulator, rest: httpx.AsyncClient) -> None:
    ws = await _subscribed(rest)
    await rest.post("/sim/faults", json={"kind": "mute", "duration_s": 1.5})
    with contextlib.suppress(TimeoutError):  # drain frames queued before the fault
        while True:
            await recv_frame(ws, timeout_s=0.3)
    assert sim.faults.active("mute")
    conn = next(iter(sim.feeder.connections))
    sent = conn.frames_sent
    conn.ws.latency = 0.0
    await eventually(lambda: conn.ws.latency > 0, timeout_s=1.0)  # a ping answered during the mute
    assert sim.faults.active("mute") and conn.frames_sent == sent and ws.state.name == "OPEN"
    # After the window, data flows again on the same socket.
    _, frame = await recv_frame(ws, timeout_s=3)
    assert frame.type == pb.live_feed and not sim.faults.active("mute")
    await ws.close()


async def test_auth_fault_answers_the_handshakes_with_401(sim: Simulator, rest: httpx.AsyncClient) -> None:
    uri = await authorize(rest)
    await rest.post("/sim/faults", json={"kind": "auth", "duration_s": 30})
    with pytest.raises(InvalidStatus) as feeder:
        await connect(uri)
    assert feeder.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as redirect:
        await connect(f"ws://127.0.0.1:{sim.rest_port}/v3/feed/market-data-feed", additional_headers=AUTH)
    assert redirect.value.response.status_code == 401
    assert (await rest.get("/v3/feed/market-data-feed/authorize")).status_code == 401
    assert (await rest.get("/v2/user/profile")).status_code == 200
    await rest.post("/sim/reset")
    async with connect(await authorize(rest)) as ws:
        assert (await recv_frame(ws))[1].type == pb.market_info


async def test_reply_delay_fills_the_order_at_once_and_holds_its_answer_until_the_window_ends(
    sim: Simulator, rest: httpx.AsyncClient
) -> None:
    sim.market.set_price("BOSCHLTD", 73500)
    held = await rest.post("/sim/faults", json={"kind": "reply_delay", "duration_s": 60, "delay_s": 60})
    assert held.json()["active"]["reply_delay"] > 59
    body = order(tag="guard-close-x", quantity=1)
    placing = asyncio.create_task(rest.post("/v3/order/place", json=body))

    async def filled() -> list[dict[str, object]]:
        return [o for o in (await rest.get("/sim/orders")).json() if o["status"] == "complete"]

    assert [o["tag"] for o in await eventually(filled, timeout_s=5)] == ["guard-close-x"]
    await asyncio.sleep(0.3)  # the answer is still held (nothing to poll for: the absence of a reply)
    assert not placing.done()
    await rest.post("/sim/faults", json={"kind": "reply_delay", "duration_s": 0})
    answer = await asyncio.wait_for(placing, 5)
    assert answer.status_code == 200 and answer.json()["data"]["order_ids"]
    unheld = await asyncio.wait_for(rest.post("/v3/order/place", json={**body, "tag": "guard-close-y"}), 5)
    assert unheld.status_code == 200
