"""The feed reads market data with the analytics token when one is set: the WebSocket and the REST LTP poll keep
working while the access token is dead."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr
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


@pytest.fixture
async def sim(settings: Settings) -> AsyncIterator[Simulator]:
    async with running_simulator(fast(settings)) as running:
        yield running


async def test_websocket_and_rest_poll_use_the_analytics_token(
    sim: Simulator, settings: Settings, redis: Redis, logs: Logs
) -> None:
    analytics, _ = sim.tokens.issue("analytics")
    dead, _ = sim.tokens.issue("access", expires_in_s=0.001)  # already expired: any use of it is refused
    feed_settings = fast(
        settings,
        upstox_access_token=SecretStr(dead),
        upstox_analytics_token=SecretStr(analytics),
        upstox_api_base=sim.rest_url,
        rest_poll_interval_s=0.3,
    )
    await redis.hset(keys.FEED_SUBSCRIPTIONS, mapping={"BOSCHLTD": BOSCH})
    async with running_feed(feed_settings, redis):
        await eventually(lambda: _connected(redis), timeout_s=10)
        await sim.inject("drop", 30)  # the WebSocket only: the REST poll takes over, with the same token
        sim.market.set_price("BOSCHLTD", 69000)

        async def rest_price() -> bool:
            row = await redis.hgetall(keys.price("BOSCHLTD"))
            truth = PriceTruth.from_fields(row) if row else None
            return truth is not None and truth.rest and truth.ltp == 69000

        await eventually(rest_price, timeout_s=5)
    assert not [line for line in logs.lines if "token rejected" in line]
    assert dead not in "\n".join(logs.lines) and analytics not in "\n".join(logs.lines)


async def _connected(redis: Redis) -> bool:
    return FeedStatus.from_redis(await redis.hgetall(keys.FEED_STATUS)).connected
