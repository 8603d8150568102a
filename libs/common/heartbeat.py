"""Service liveness as a Redis key with a TTL (arq's pattern), and the `--check` exit code.

Each process beats twice: `heartbeat:SERVICE:INSTANCE` (this instance, what `--check` reads; INSTANCE is
`INSTANCE_NAME`, the host name by default) and `heartbeat:SERVICE` (the service as a whole: any monitor or api;
for the feed only its leader, the one holding the Upstox connection). `instances:SERVICE` lists the instances.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.common import keys
from libs.common.clock import Clock, SystemClock
from libs.common.redis_client import create_redis
from libs.common.settings import Settings

_FORGET_AFTER_TTLS = 60  # an instance silent this many heartbeat TTLs is dropped from instances:SERVICE

# KEYS: heartbeat:SERVICE:INSTANCE, instances:SERVICE, heartbeat:SERVICE. ARGV: instance, now, ttl_s, forget
# before (epoch s), whether to beat for the service ('1'/'0'). One command per beat, like the single SET it replaced.
_BEAT = """
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
if ARGV[5] == '1' then redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[3]) end
return 1
"""


async def beat(redis: Redis, service: str, settings: Settings, clock: Clock, *, for_service: bool = True) -> None:
    """Record that this instance of `service` is alive now (and the service, unless `for_service` is False).

    The keys expire after `heartbeat_ttl_s`. Raises RedisError.
    """
    now = clock.now()
    ttl_s = settings.heartbeat_ttl_s
    instance = settings.instance_name
    await redis.register_script(_BEAT)(
        keys=[keys.heartbeat(service, instance), keys.instances(service), keys.heartbeat(service)],
        args=[instance, f"{now:.3f}", ttl_s, now - _FORGET_AFTER_TTLS * ttl_s, "1" if for_service else "0"],
    )


async def heartbeat_age_s(redis: Redis, service: str, clock: Clock, instance: str | None = None) -> float | None:
    """Seconds since `service` (or that `instance` of it) last beat, or None when expired or never seen."""
    value = await redis.get(keys.heartbeat(service, instance))
    if value is None:
        return None
    return max(0.0, clock.now() - float(value))


async def live_instances(redis: Redis, service: str, settings: Settings, clock: Clock) -> dict[str, float]:
    """Instance name -> seconds since its last beat, for the instances of `service` beating within the TTL."""
    now = clock.now()
    rows = cast(
        list[tuple[str, float]],
        await redis.zrangebyscore(keys.instances(service), now - settings.heartbeat_ttl_s, "+inf", withscores=True),
    )
    return {str(name): round(max(0.0, now - float(at)), 3) for name, at in rows}


async def beat_forever(
    redis: Redis, service: str, settings: Settings, clock: Clock, *, for_service: Callable[[], bool] | None = None
) -> None:
    """Beat every `heartbeat_interval_s`; a Redis outage skips beats instead of ending the loop.

    `for_service` says, at each beat, whether this instance also beats for the service (default: always).
    """
    while True:
        # On a Redis outage the heartbeat simply ages; the service's own loops report the outage.
        with contextlib.suppress(RedisError):
            await beat(redis, service, settings, clock, for_service=for_service() if for_service else True)
        await clock.sleep(settings.heartbeat_interval_s)


async def _check(service: str, settings: Settings) -> bool:
    redis = create_redis(settings)
    try:
        age = await heartbeat_age_s(redis, service, SystemClock(), settings.instance_name)
    except RedisError:
        return False
    finally:
        await redis.aclose()
    return age is not None and age < settings.heartbeat_ttl_s


def check(service: str, settings: Settings) -> int:
    """Exit code for `python -m services.X --check`: 0 if the heartbeat is fresh, 1 otherwise."""
    return 0 if asyncio.run(_check(service, settings)) else 1
