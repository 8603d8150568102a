"""The one way to open a Redis connection, with explicit timeouts and redis-py's own retry.

Callers do not wrap Redis calls in a second retry layer: a call that still fails after the client's
retries raises `redis.exceptions.ConnectionError`/`TimeoutError`, and the service's loop decides.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from libs.common.metrics import CountingRetry
from libs.common.settings import Settings


def create_redis(settings: Settings, *, decode_responses: bool = True) -> Redis:
    """A client for `settings.redis_url` with connect/socket timeouts and jittered retries."""
    return Redis.from_url(
        settings.redis_url,
        decode_responses=decode_responses,
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        socket_keepalive=True,
        health_check_interval=10,
        retry=CountingRetry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), settings.redis_retries),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        client_name=None,
    )
