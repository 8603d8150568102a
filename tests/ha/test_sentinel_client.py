"""`create_redis` through Sentinel against a real topology: it follows a failover without a new client."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from libs.common.redis_client import create_redis
from libs.common.settings import Settings
from tests.ha.topology import sentinel_topology
from tests.helpers import eventually

pytestmark = pytest.mark.integration


def _settings(sentinels: str) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        redis_sentinels=sentinels,
        redis_retries=2,
        redis_connect_timeout_s=0.5,
        redis_socket_timeout_s=2,
    )


async def _writes(redis: Redis, key: str) -> bool:
    try:
        await redis.set(key, "1")
    except Exception:  # during the failover a write fails; the test waits for one to pass
        return False
    return True


async def test_client_follows_a_failover_and_pubsub_resubscribes(tmp_path: Path) -> None:
    with sentinel_topology(tmp_path) as topo:
        await topo.wait_ready()
        redis = create_redis(_settings(topo.sentinels_setting))
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await redis.set("before", "kept")
            assert await redis.execute_command("WAIT", 1, 2000) == 1  # replicated before the kill
            await pubsub.subscribe("notices")

            old = topo.kill_master()
            started = time.monotonic()
            new = await topo.wait_failover(old)
            assert new != old
            await eventually(lambda: _writes(redis, "after"), timeout_s=15, interval_s=0.1)
            followed_s = time.monotonic() - started
            assert await redis.get("before") == "kept"  # acknowledged on a replica: survives the failover
            assert followed_s < 10, followed_s
            print(f"\n[figure] client: first write on the new master {followed_s:.2f} s after the master's SIGKILL")

            async def delivered() -> bool:
                await redis.publish("notices", "hello")
                try:
                    message = await pubsub.get_message(timeout=0.2)
                except Exception:  # the subscriber reconnects to the new master on this read
                    return False
                return message is not None and message["data"] == "hello"

            await eventually(delivered, timeout_s=15, interval_s=0.1)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await redis.aclose()


async def test_redis_url_alone_is_unchanged(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, redis_url="redis://127.0.0.1:1/3")  # type: ignore[call-arg]
    redis = create_redis(settings)
    try:
        kwargs = redis.connection_pool.connection_kwargs
        assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("127.0.0.1", 1, 3)
        assert type(redis) is Redis
    finally:
        await redis.aclose()
