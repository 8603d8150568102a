from __future__ import annotations

import pytest
from redis.asyncio import Redis

from libs.common import keys
from libs.common.clock import SystemClock
from libs.common.heartbeat import beat, heartbeat_age_s
from libs.common.redis_client import create_redis
from libs.common.settings import Settings

pytestmark = pytest.mark.integration


async def test_client_factory_talks_to_real_redis(redis: Redis, settings: Settings) -> None:
    await redis.hset(keys.price("BOSCHLTD"), mapping={"ltp": "575.00"})
    assert await redis.hget(keys.price("BOSCHLTD"), "ltp") == "575.00"
    pool = redis.connection_pool
    assert pool.connection_kwargs["socket_timeout"] == settings.redis_socket_timeout_s
    assert pool.connection_kwargs["socket_connect_timeout"] == settings.redis_connect_timeout_s


async def test_unreachable_redis_fails_fast_with_a_connection_error() -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, redis_url="redis://127.0.0.1:1/0", redis_retries=1, redis_connect_timeout_s=0.5
    )
    client = create_redis(settings)
    with pytest.raises(RedisConnectionError):
        await client.ping()
    await client.aclose()


async def test_heartbeat_has_a_ttl_and_an_age(redis: Redis, settings: Settings) -> None:
    clock = SystemClock()
    assert await heartbeat_age_s(redis, "feed", clock) is None
    await beat(redis, "feed", settings, clock)
    age = await heartbeat_age_s(redis, "feed", clock)
    assert age is not None and age < 1
    assert 0 < await redis.ttl(keys.heartbeat("feed")) <= settings.heartbeat_ttl_s
