from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from libs.common.redis_client import create_redis
from libs.common.settings import Settings
from tests.helpers import RedisServer, redis_server


@pytest.fixture(scope="session")
def redis_srv() -> Iterator[RedisServer]:
    """One private redis-server for the whole test session (see `tests/helpers.py`)."""
    with redis_server() as server:
        yield server


@pytest.fixture
def settings(redis_srv: RedisServer) -> Settings:
    """Settings pointing at the private Redis, with nothing read from a developer's `.env`."""
    return Settings(_env_file=None, redis_url=redis_srv.url)  # type: ignore[call-arg]


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    """A client of the private Redis, flushed before and after the test."""
    client = create_redis(settings)
    await client.flushall()
    try:
        yield client
    finally:
        await client.flushall()
        await client.aclose()


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """Each test starts and ends with loguru's default handler, so file sinks are closed."""
    yield
    from loguru import logger

    logger.remove()
