"""The one way to open a Redis connection, with explicit timeouts and redis-py's own retry.

Callers do not wrap Redis calls in a second retry layer: a call that still fails after the client's
retries raises `redis.exceptions.ConnectionError`/`TimeoutError`, and the service's loop decides.

With `REDIS_SENTINELS` set the client finds the master through Sentinel (redis-py's own support): every new
connection asks the Sentinels for the current master, a connection to a demoted master is dropped on its first
READONLY answer, and pub/sub reconnects (and resubscribes) the same way, so a failover needs no restart.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from libs.common.metrics import CountingRetry
from libs.common.settings import Settings


class _SentinelMaster(Redis):
    """The master's client; closing it also closes its connections to the Sentinels."""

    sentinel_manager: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinel_manager is not None:
            await self.sentinel_manager.aclose()


def create_redis(settings: Settings, *, decode_responses: bool = True) -> Redis:
    """A client for the master (through `REDIS_SENTINELS` when set, else `REDIS_URL`) with connect/socket
    timeouts and jittered retries."""
    options: dict[str, Any] = {
        "decode_responses": decode_responses,
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": settings.redis_connect_timeout_s,
        "socket_keepalive": True,
        "health_check_interval": 10,
        "retry": CountingRetry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), settings.redis_retries),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "client_name": None,
    }
    if not settings.sentinel_addresses:
        return Redis.from_url(settings.redis_url, **options)
    # REDIS_URL still supplies the database number and credentials; its host and port come from Sentinel.
    url_options = parse_url(settings.redis_url)
    for name in ("db", "username", "password"):
        if url_options.get(name) is not None:
            options[name] = url_options[name]
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        settings.sentinel_addresses,
        sentinel_kwargs={
            "socket_timeout": settings.redis_connect_timeout_s,
            "socket_connect_timeout": settings.redis_connect_timeout_s,
        },
    )
    client: _SentinelMaster = sentinel.master_for(
        settings.redis_sentinel_master, redis_class=_SentinelMaster, **options
    )
    client.sentinel_manager = sentinel
    return client
