"""The sealed test session: no developer setting, no `.env`, a private Redis that every test finds empty.

A shell where the README's `export PRICE_STALE_AFTER_S=10 PRICE_CACHE_TTL_S=40` was typed, or a checkout
whose `make up` wrote `.env` (`API_KEY`, maybe a real `UPSTOX_ACCESS_TOKEN`), must not change what a test
sees: every setting's variable is cleared from the environment for each test, `Settings` never reads a
`.env` file during the session, and child processes get `tests.helpers.sealed_child` (an allow-list).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from libs.common.redis_client import create_redis
from libs.common.settings import Settings
from services.sim.settings import SimSettings
from tests.helpers import RedisServer, redis_server

SETTING_VARIABLES = frozenset(name.upper() for name in SimSettings.model_fields)  # the services' and the simulator's


def pytest_configure(config: pytest.Config) -> None:
    # Before any test module runs: in-process code that calls load_settings() must not read the checkout's .env.
    Settings.model_config["env_file"] = None
    SimSettings.model_config["env_file"] = None


@pytest.fixture(autouse=True)
def _sealed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts with no setting of the guard in its environment (settings are case-insensitive)."""
    for name in list(os.environ):
        if name.upper() in SETTING_VARIABLES:
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def redis_srv() -> Iterator[RedisServer]:
    """One private redis-server for the whole test session (see `tests/helpers.py`)."""
    with redis_server() as server:
        yield server


@pytest.fixture
def settings(redis_srv: RedisServer) -> Settings:
    """Settings pointing at the private Redis, which is flushed first: every test that uses it starts clean."""
    with SyncRedis(port=redis_srv.port) as client:
        client.flushall()
    return Settings(_env_file=None, redis_url=redis_srv.url)  # type: ignore[call-arg]


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    """A client of the private Redis (empty at the start), flushed again after the test."""
    client = create_redis(settings)
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The unit tier needs no Redis: a test that uses the private Redis must say its tier."""
    unmarked = [
        item.nodeid
        for item in items
        if "redis_srv" in getattr(item, "fixturenames", ())
        and not (item.get_closest_marker("integration") or item.get_closest_marker("e2e"))
    ]
    if unmarked:
        raise pytest.UsageError(f"tests that use Redis must be marked integration or e2e: {unmarked}")
