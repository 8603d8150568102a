"""A saturated feed keeps its link: the reader drains the socket first, so pongs arrive on time at the default
ping timeout while the decoder catches up by keeping the newest tick per symbol (counted). And the server's side
of liveness: its pings are tracked, and a server that stops pinging (and sends nothing) ends the link."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from redis.asyncio import Redis
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from bench.frames import extra_for, market_info_frame
from bench.replay import AUTHORIZE_PATH, FEED_PATH, _json_response
from libs.common import keys
from libs.common.models import FeedStatus
from libs.common.settings import Settings
from services.sim.server import Simulator, running_simulator
from tests.e2e.harness import Stack
from tests.feed.conftest import Logs, fast, running_feed
from tests.helpers import REPO_ROOT, eventually, free_port, sealed_child, terminate

pytestmark = pytest.mark.integration

SYMBOLS = 5000  # the bench's size: a feed that reads behind the socket lost its link here


async def status(redis: Redis) -> FeedStatus:
    return FeedStatus.from_redis(await redis.hgetall(keys.FEED_STATUS))


@pytest.fixture
def replay(tmp_path: Path) -> Iterator[int]:
    """`bench.replay` in its own process: frames of 100 ticks back to back, as fast as the feed reads."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.replay", str(port), str(SYMBOLS)],
        stdout=subprocess.PIPE,
        **sealed_child(tmp_path, PYTHONPATH=str(REPO_ROOT)),
    )
    try:
        assert proc.stdout is not None
        assert b"replay feeder on" in proc.stdout.readline()
        yield port
    finally:
        terminate(proc)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.e2e
async def test_a_saturated_feed_process_answers_pings_at_the_default_timeout_and_counts_what_it_supersedes(
    tmp_path: Path, replay: int
) -> None:
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    env = {
        "SIM_PORT": str(replay),
        "SIM_EXTRA_INSTRUMENTS": str(extra_for(SYMBOLS)),
        "WS_PING_INTERVAL_S": "1.0",  # several pings in the window, each held to the product's default timeout
        "WS_PING_TIMEOUT_S": str(defaults.ws_ping_timeout_s),
        "FEED_SILENCE_TIMEOUT_S": str(defaults.feed_silence_timeout_s),
    }
    async with Stack(tmp_path / "stack", **env) as stack:
        await stack.start("feed")
        await stack.wait_log("feed", "[SUCCESS] WebSocket connection established!")
        await asyncio.sleep(3 * defaults.ws_ping_timeout_s + 1)
        current = await stack.feed_status()
        assert current.connected, current.last_error
        assert current.network_errors == 0, current
        assert current.superseded_ticks > 0, current  # behind: the decoder kept the newest tick per symbol
        assert "WebSocket connection closed" not in stack.log("feed")

        async def every_symbol_priced() -> bool:
            return await stack.redis.zcard(keys.PRICE_INDEX) >= SYMBOLS

        await eventually(every_symbol_priced, timeout_s=10)


async def test_the_servers_pings_are_tracked(settings: Settings, redis: Redis) -> None:
    async with running_simulator(fast(settings)) as sim:
        assert isinstance(sim, Simulator)
        async with running_feed(fast(settings, upstox_api_base=sim.rest_url), redis):

            async def pinged() -> FeedStatus | None:
                current = await status(redis)
                return current if current.server_pings >= 2 and current.last_server_ping_at else None

            current = await eventually(pinged, timeout_s=10)
            assert current.connected


@asynccontextmanager
async def server_that_stops_pinging(pings: int, every_s: float) -> AsyncIterator[tuple[int, list[int]]]:
    """An Upstox-like endpoint: authorize, then a socket that sends market_info, pings `pings` times and then
    goes quiet (no data, no pings) while still answering the client's pings. Yields (port, connection count)."""
    port = free_port()
    connections: list[int] = []

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        if request.path.startswith(AUTHORIZE_PATH):
            uri = f"ws://127.0.0.1:{port}{FEED_PATH}?code=x"
            return _json_response({"status": "success", "data": {"authorized_redirect_uri": uri}})
        return None

    async def handler(ws: ServerConnection) -> None:
        connections.append(1)
        await ws.send(market_info_frame())
        for _ in range(pings):
            await asyncio.sleep(every_s)
            await ws.ping()
        await ws.wait_closed()  # the library still answers the client's pings

    async with serve(handler, "127.0.0.1", port, process_request=process_request, ping_interval=None):
        yield port, connections


async def test_a_server_that_stops_pinging_ends_the_link_though_it_answers_ours(
    settings: Settings, redis: Redis, logs: Logs
) -> None:
    async with server_that_stops_pinging(pings=3, every_s=0.2) as (port, connections):
        feed_settings = fast(
            settings,
            upstox_api_base=f"http://127.0.0.1:{port}",
            ws_server_ping_timeout_s=1.0,
            feed_silence_timeout_s=60.0,  # data silence alone would not end it
            ws_ping_interval_s=0.2,
            ws_ping_timeout_s=0.5,
        )
        async with running_feed(feed_settings, redis):
            await eventually(lambda: len(connections) >= 2, timeout_s=15)
        reasons = logs.having("Reason: the server's pings stopped")
        assert reasons, logs.lines[-30:]
        assert not logs.having("no pong within")  # our own pings were answered all along


async def test_a_server_that_never_pings_is_not_required_to(settings: Settings, redis: Redis, logs: Logs) -> None:
    async with server_that_stops_pinging(pings=0, every_s=0.2) as (port, connections):
        feed_settings = fast(
            settings,
            upstox_api_base=f"http://127.0.0.1:{port}",
            ws_server_ping_timeout_s=0.5,
            feed_silence_timeout_s=60.0,
            ws_ping_interval_s=0.2,
            ws_ping_timeout_s=0.5,
        )
        async with running_feed(feed_settings, redis):
            await eventually(lambda: connections, timeout_s=10)
            await asyncio.sleep(2.0)
            assert (await status(redis)).connected
        assert len(connections) == 1
        assert not logs.having("WebSocket connection closed")
