"""Service liveness as a Redis key with a TTL (arq's pattern), and the `--check` exit code."""

from __future__ import annotations

import asyncio
import contextlib

from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.common import keys
from libs.common.clock import Clock, SystemClock
from libs.common.redis_client import create_redis
from libs.common.settings import Settings


async def beat(redis: Redis, service: str, settings: Settings, clock: Clock) -> None:
    """Record that `service` is alive now; the key expires after `heartbeat_ttl_s`."""
    await redis.set(keys.heartbeat(service), f"{clock.now():.3f}", ex=settings.heartbeat_ttl_s)


async def heartbeat_age_s(redis: Redis, service: str, clock: Clock) -> float | None:
    """Seconds since `service` last beat, or None when its heartbeat has expired or never existed."""
    value = await redis.get(keys.heartbeat(service))
    if value is None:
        return None
    return max(0.0, clock.now() - float(value))


async def beat_forever(redis: Redis, service: str, settings: Settings, clock: Clock) -> None:
    """Beat every `heartbeat_interval_s`; a Redis outage skips beats instead of ending the loop."""
    while True:
        # On a Redis outage the heartbeat simply ages; the service's own loops report the outage.
        with contextlib.suppress(RedisError):
            await beat(redis, service, settings, clock)
        await clock.sleep(settings.heartbeat_interval_s)


async def _check(service: str, settings: Settings) -> bool:
    redis = create_redis(settings)
    try:
        age = await heartbeat_age_s(redis, service, SystemClock())
    except RedisError:
        return False
    finally:
        await redis.aclose()
    return age is not None and age < settings.heartbeat_ttl_s


def check(service: str, settings: Settings) -> int:
    """Exit code for `python -m services.X --check`: 0 if the heartbeat is fresh, 1 otherwise."""
    return 0 if asyncio.run(_check(service, settings)) else 1
