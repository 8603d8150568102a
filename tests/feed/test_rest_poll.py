"""Layer 2b: a WebSocket-only outage with REST up keeps open positions' prices fresh from LTP V3 (source rest)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from libs.common import keys
from libs.common.freshness import PriceTruth
from libs.common.models import FeedStatus
from libs.common.settings import Settings
from services.sim.server import Simulator, running_simulator
from tests.feed.conftest import Logs, fast, running_feed
from tests.helpers import eventually

pytestmark = pytest.mark.integration

BOSCH = "NSE_EQ|INE323A01026"
NIFTY = "NSE_INDEX|Nifty 50"


@pytest.fixture
async def sim(settings: Settings) -> AsyncIterator[Simulator]:
    async with running_simulator(fast(settings)) as running:
        yield running


async def status(redis: Redis) -> FeedStatus:
    return FeedStatus.from_redis(await redis.hgetall(keys.FEED_STATUS))


async def truth(redis: Redis, symbol: str) -> PriceTruth | None:
    row = await redis.hgetall(keys.price(symbol))
    return PriceTruth.from_fields(row) if row else None


async def test_websocket_down_rest_up_polls_open_positions_only(
    sim: Simulator, settings: Settings, redis: Redis, logs: Logs
) -> None:
    feed_settings = fast(settings, upstox_api_base=sim.rest_url, rest_poll_interval_s=0.3)
    await redis.hset(keys.FEED_SUBSCRIPTIONS, mapping={"BOSCHLTD": BOSCH, "NIFTY": NIFTY})  # the open positions
    async with running_feed(feed_settings, redis) as feed:
        await eventually(lambda: _live(redis))
        assert not (await status(redis)).rest_polling  # the WebSocket is up: no polling

        await sim.inject("drop", 30)  # the WebSocket only; REST keeps answering
        sim.market.set_price("BOSCHLTD", 69000)
        dropped_at = time.time()

        async def rest_price() -> PriceTruth | None:
            t = await truth(redis, "BOSCHLTD")
            return t if t is not None and t.rest and t.ltp == 69000 else None

        polled = await eventually(rest_price, timeout_s=3)
        assert time.time() - dropped_at < 2  # within a few poll intervals of the drop
        await eventually(lambda: _polling(redis), timeout_s=1)
        nifty = await truth(redis, "NIFTY")
        assert nifty is not None and nifty.rest  # matched by instrument_token ("NSE_INDEX:Nifty 50" as the key)
        assert not (await truth(redis, "KAYNES") or PriceTruth(1, 0)).rest  # not an open position: not polled
        assert "[FALLBACK] WebSocket down, Upstox REST answers: polling LTP for open positions (source rest)" in (
            logs.lines
        )
        # REST keeps the price current: as_of moves with each poll
        await eventually(lambda: _newer(redis, "BOSCHLTD", polled.as_of), timeout_s=2)

        await sim.inject("rest_down", 30)  # now REST is gone too: polling stops, prices age
        await eventually(lambda: _not_polling(redis), timeout_s=3)
        frozen = await truth(redis, "BOSCHLTD")
        assert frozen is not None
        assert feed.rest_poller.polls >= 2


async def _live(redis: Redis) -> bool:
    return (await status(redis)).connected


async def _polling(redis: Redis) -> bool:
    return (await status(redis)).rest_polling


async def _not_polling(redis: Redis) -> bool:
    return not (await status(redis)).rest_polling


async def _newer(redis: Redis, symbol: str, than: float) -> bool:
    t = await truth(redis, symbol)
    return t is not None and t.as_of > than
