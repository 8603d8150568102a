"""Shared metrics: Redis errors are counted by the client's own retry; an exporter that cannot bind is skipped."""

from __future__ import annotations

import socket

import pytest
from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError as RedisConnectionError

from libs.common import metrics
from libs.common.redis_client import create_redis
from libs.common.settings import Settings
from tests.helpers import free_port

pytestmark = pytest.mark.integration


def _redis_errors(service: str) -> float:
    return REGISTRY.get_sample_value("guard_redis_errors_total", {"service": service}) or 0.0


async def test_every_failed_redis_attempt_is_counted_for_this_service() -> None:
    metrics.set_service("metrics-test")
    assert _redis_errors("metrics-test") == 0.0  # the series exists from the start
    settings = Settings(_env_file=None, redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_retries=2)  # type: ignore[call-arg]
    redis = create_redis(settings)
    try:
        with pytest.raises(RedisConnectionError):
            await redis.ping()
    finally:
        await redis.aclose()
    assert _redis_errors("metrics-test") == 3  # the first try and both retries


def test_an_exporter_port_in_use_is_skipped_with_a_warning() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert metrics.start_exporter(taken.getsockname()[1], "127.0.0.1") is False
    assert metrics.start_exporter(0, "127.0.0.1") is False  # 0: off
