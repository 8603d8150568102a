"""`supervise` (heartbeat + named loops, one failure policy), `cancel_and_wait` and `EmbeddedServer`, for real:
a real Redis for the heartbeat, a real uvicorn on loopback."""

from __future__ import annotations

import asyncio
import itertools
import socket

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from libs.common import service
from libs.common.backoff import Backoff
from libs.common.clock import SystemClock
from libs.common.heartbeat import heartbeat_age_s
from libs.common.service import EmbeddedServer, cancel_and_wait, supervise
from libs.common.settings import Settings
from tests.helpers import eventually, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _quick_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "LOOP_RESTART", Backoff(0.05, 0.2, jitter=0.2))


async def test_a_failed_loop_is_restarted_while_the_others_and_the_heartbeat_go_on(
    settings: Settings, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    runs = {"flaky": 0, "steady": 0}
    steady_ticks = 0

    async def flaky() -> None:
        runs["flaky"] += 1
        if runs["flaky"] <= 2:
            raise RedisConnectionError("Redis went away")
        if runs["flaky"] == 3:
            raise KeyError("a bug")
        await asyncio.Event().wait()

    async def steady() -> None:
        nonlocal steady_ticks
        runs["steady"] += 1
        while True:
            steady_ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(
        supervise("unit", {"flaky": flaky, "steady": steady}, redis=redis, settings=settings, clock=SystemClock())
    )
    try:
        await eventually(lambda: runs["flaky"] == 4, timeout_s=5)

        async def beating() -> bool:
            return await heartbeat_age_s(redis, "unit", SystemClock()) is not None

        await eventually(beating, timeout_s=5)
        assert runs["steady"] == 1 and steady_ticks > 0  # never restarted: its neighbour's failures left it alone
        names = {t.get_name() for t in asyncio.all_tasks()}
        assert {"unit:flaky", "unit:steady", "unit:heartbeat"} <= names
    finally:
        await cancel_and_wait([task])
    assert task.cancelled()
    assert not {"unit:flaky", "unit:steady", "unit:heartbeat"} & {t.get_name() for t in asyncio.all_tasks()}


async def test_a_loop_that_ends_is_restarted(settings: Settings, redis: Redis) -> None:
    runs = 0

    async def short() -> None:
        nonlocal runs
        runs += 1

    task = asyncio.create_task(supervise("unit", {"short": short}, redis=redis, settings=settings, clock=SystemClock()))
    try:
        await eventually(lambda: runs >= 3, timeout_s=5)
    finally:
        await cancel_and_wait([task])


async def test_restarts_back_off_while_a_loop_keeps_failing_at_once(settings: Settings, redis: Redis) -> None:
    started: list[float] = []
    loop = asyncio.get_running_loop()

    async def failing() -> None:
        started.append(loop.time())
        raise RuntimeError("always")

    task = asyncio.create_task(
        supervise("unit", {"failing": failing}, redis=redis, settings=settings, clock=SystemClock())
    )
    try:
        await eventually(lambda: len(started) >= 5, timeout_s=5)
    finally:
        await cancel_and_wait([task])
    gaps = [b - a for a, b in itertools.pairwise(started)]
    assert 0.04 <= gaps[0] <= 0.1  # about the base (0.05 s less up to a fifth)
    assert all(gap >= 0.16 - 0.02 for gap in gaps[2:4])  # grown to the cap (0.2 s less up to a fifth)


async def test_a_stop_that_is_itself_stopped_still_sees_its_tasks_end() -> None:
    """The api's lifespan stops `supervise`, which stops its loops: a re-cancel from above must not orphan them."""

    async def slow_to_tidy() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.3)  # its clean-up, longer than the stop above it waits

    inner = asyncio.create_task(slow_to_tidy())
    await asyncio.sleep(0)
    stopping = asyncio.create_task(cancel_and_wait([inner], grace_s=1.0))
    await asyncio.sleep(0.05)
    await cancel_and_wait([stopping], grace_s=0.05)  # re-cancels `stopping` while it waits for `inner`
    assert stopping.cancelled() and inner.done()


async def test_embedded_server_serves_then_stops_gracefully_and_says_when_it_cannot_listen() -> None:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    port = free_port()
    server = EmbeddedServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None), name="unit:http")
    await server.start()
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"http://127.0.0.1:{port}/ping")).json() == {"pong": "yes"}
    serving = asyncio.create_task(server.serve_until_cancelled())
    await asyncio.sleep(0.05)
    assert not serving.done()
    await cancel_and_wait([serving])
    assert serving.cancelled()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # no longer listening

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = EmbeddedServer(
            uvicorn.Config(app, host="127.0.0.1", port=taken.getsockname()[1], log_config=None), name="unit:busy"
        )
        with pytest.raises(SystemExit):
            await busy.start()
