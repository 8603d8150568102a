"""Fixtures of the api tests: the app on a private Redis, driven in-process through httpx."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from libs.common import keys
from libs.common.broker import Broker, BrokerError, Fill, PaperBroker
from libs.common.models import FeedState, FeedStatus, Position
from libs.common.price_cache import PriceCache, Tick
from libs.common.settings import Settings
from services.api.app import create_app

ApiFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


class CountingBroker(PaperBroker):
    """A paper broker that counts orders, can be slow, and can fail with a BrokerError."""

    def __init__(self, *, delay_s: float = 0.0, fail_status: int | None = None) -> None:
        super().__init__()
        self.orders = 0
        self.delay_s = delay_s
        self.fail_status = fail_status

    async def close(self, position: Position, tag: str, decision_price: int | None) -> Fill:
        self.orders += 1
        await asyncio.sleep(self.delay_s)
        if self.fail_status is not None:
            raise BrokerError(f"broker answered {self.fail_status} (UDAPI100500: down)", status_code=self.fail_status)
        return await super().close(position, tag, decision_price)


def profile_ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"status": "success", "data": {"user_name": "Sim"}})


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    """Test settings: compressed thresholds, paper broker."""
    return settings.model_copy(update={"price_stale_after_s": 30.0, "price_cache_ttl_s": 300, "broker": "paper"})


@pytest.fixture
def make_api(redis: Redis) -> ApiFactory:
    """`async with make_api(settings, broker=...) as client:` runs the app's lifespan around an httpx client."""

    @asynccontextmanager
    async def factory(
        settings: Settings, *, broker: Broker | None = None, http: httpx.AsyncClient | None = None, **kw: Any
    ) -> AsyncIterator[httpx.AsyncClient]:
        probe_http = http or httpx.AsyncClient(transport=httpx.MockTransport(profile_ok))
        app = create_app(settings, broker=broker or PaperBroker(), http=probe_http, **kw)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client,
        ):
            yield client

    return factory


@pytest.fixture
async def client(make_api: ApiFactory, api_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with make_api(api_settings) as c:
        yield c


async def write_prices(redis: Redis, as_of: float, prices: dict[str, str], ttl_s: int = 300) -> None:
    """Write prices as the feed does (one frame)."""
    ticks = [Tick(symbol=s, instrument_key=f"NSE_EQ|{s}", ltp=p) for s, p in prices.items()]
    await PriceCache(redis, ttl_s).write_frame(ticks, as_of, publish=False)


async def set_feed(redis: Redis, **fields: Any) -> None:
    """Write the feed's status hash as the feed does."""
    await redis.hset(keys.FEED_STATUS, mapping=FeedStatus(**fields).to_redis())  # type: ignore[arg-type]


async def feed_live(redis: Redis, now: float) -> None:
    await set_feed(redis, state=FeedState.LIVE, connected=True, subscribed_symbols=208, last_message_at=now)
    await redis.set(keys.heartbeat("feed"), f"{now:.3f}", ex=10)


BOSCH = {
    "symbol": "BOSCHLTD",
    "side": "long",
    "quantity": 10,
    "entry_price": 735.00,
    "stop_loss": 698.25,
    "instrument_key": "NSE_EQ|INE323A01026",
}
