"""The credentials module against a real Redis: encrypted at rest, seen by every reader at once, `.env` still
wins once edited, expiry from the token or the 03:30 IST rule, and runtime tokens kept out of log lines."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from datetime import datetime

import pytest
from loguru import logger
from pydantic import SecretStr
from redis.asyncio import Redis

from libs.common import keys
from libs.common.clock import IST
from libs.common.credentials import (
    Credentials,
    CredentialsLocked,
    Expiry,
    HeldToken,
    next_0330_ist,
    state_of,
    token_exp,
)
from libs.common.logging import setup_logging
from libs.common.settings import Settings

pytestmark = pytest.mark.integration

NEW = "eyJ-new-access-token-7d1c2b"


def ist(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=IST).timestamp()


def jwt(exp: float) -> str:
    body = base64.urlsafe_b64encode(json.dumps({"sub": "X", "exp": exp}).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJIUzI1NiJ9.{body}.c2ln"


@pytest.fixture
def real(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"upstox_access_token": SecretStr("env-token-0001"), "credentials_key": SecretStr("k" * 32)}
    )


def test_the_0330_ist_rule() -> None:
    assert next_0330_ist(ist("2026-12-03 15:00:00")) == ist("2026-12-04 03:30:00")
    assert next_0330_ist(ist("2026-12-04 02:00:00")) == ist("2026-12-04 03:30:00")
    assert next_0330_ist(ist("2026-12-04 03:30:00")) == ist("2026-12-05 03:30:00")


def test_expiry_comes_from_the_token_when_it_carries_one() -> None:
    assert token_exp(jwt(1_800_000_000)) == 1_800_000_000
    assert token_exp("not-a-jwt") is None
    assert token_exp("a.!!!.c") is None
    assert token_exp(jwt(True)) is None  # type: ignore[arg-type]
    creds = Credentials(Settings(_env_file=None, upstox_access_token=SecretStr("plain-token")))  # type: ignore[call-arg]
    seen = ist("2026-12-03 10:00:00")
    assert creds.expiry(HeldToken("plain-token", "env", seen)) == Expiry(ist("2026-12-04 03:30:00"), "03:30 IST rule")
    assert creds.expiry(HeldToken(jwt(1_800_000_000), "api", seen)) == Expiry(1_800_000_000, "token")
    sim = Credentials(Settings(_env_file=None))  # type: ignore[call-arg]
    assert sim.expiry(HeldToken("sim-access-token", "sim", seen)) == Expiry(None, "never")


def test_states() -> None:
    expiry = Expiry(1000.0, "token")
    assert state_of(expiry, 100.0, 600, rejected=False) == "valid"
    assert state_of(expiry, 500.0, 600, rejected=False) == "expiring"
    assert state_of(expiry, 500.0, 600, rejected=True) == "rejected"
    assert state_of(expiry, 1000.0, 600, rejected=True) == "expired"
    assert state_of(Expiry(None, "never"), 1e12, 600, rejected=False) == "valid"


async def test_a_stored_token_is_encrypted_and_every_reader_sees_it(real: Settings, redis: Redis) -> None:
    api, monitor = Credentials(real, redis), Credentials(real, redis)
    assert await monitor.access() == "env-token-0001"
    assert await monitor.market_data() == "env-token-0001"  # no analytics token: the access token serves both
    held = await api.store_access(NEW, source="api", user_id="U1")
    assert held.source == "api" and repr(held).count(NEW) == 0
    stored = await redis.get(keys.ACCESS_TOKEN)
    assert stored and NEW not in stored and "env-token" not in stored  # ciphertext only, at rest
    assert await monitor.access() == NEW
    assert (await monitor.held_access()).user_id == "U1"

    # The operator edits .env and restarts: the newer environment token wins over the stored one.
    edited = real.model_copy(update={"upstox_access_token": SecretStr("env-token-0002")})
    assert await Credentials(edited, redis).access() == "env-token-0002"
    # A service with another key cannot read it, and falls back to the environment's token.
    other_key = real.model_copy(update={"credentials_key": SecretStr("another-key-xxxxxxxx")})
    assert await Credentials(other_key, redis).access() == "env-token-0001"


async def test_the_analytics_token_serves_market_data_only(real: Settings, redis: Redis) -> None:
    creds = Credentials(real.model_copy(update={"upstox_analytics_token": SecretStr("analytics-0001")}), redis)
    assert await creds.market_data() == "analytics-0001"
    assert await creds.access() == "env-token-0001"


async def test_no_key_no_store(settings: Settings, redis: Redis) -> None:
    creds = Credentials(settings.model_copy(update={"upstox_access_token": SecretStr("env-token-0001")}), redis)
    with pytest.raises(CredentialsLocked, match="CREDENTIALS_KEY"):
        await creds.store_access(NEW, source="api")
    assert await redis.get(keys.ACCESS_TOKEN) is None


async def test_a_waiter_wakes_on_the_notice(real: Settings, redis: Redis) -> None:
    feed, api = Credentials(real, redis), Credentials(real, redis)
    assert not await feed.wait_for_change(False, "env-token-0001", 0.2)
    waiter = asyncio.create_task(feed.wait_for_change(True, "env-token-0001", None))
    await asyncio.sleep(0.2)
    assert not waiter.done()
    started = asyncio.get_running_loop().time()
    await api.store_access(NEW, source="cli")
    assert await asyncio.wait_for(waiter, 5) is True
    assert asyncio.get_running_loop().time() - started < 1.0  # the notice, not the 2 s re-read


async def test_a_runtime_token_never_reaches_a_log_line(real: Settings, redis: Redis) -> None:
    out = io.StringIO()
    setup_logging("api", real, stream=out)
    await Credentials(real, redis).store_access(NEW, source="api")
    logger.info(f"oops: {NEW}")
    assert NEW not in out.getvalue() and "oops: ***" in out.getvalue()


class DownRedis:
    """Redis that is down: every read fails (counted)."""

    def __init__(self) -> None:
        self.reads = 0

    async def get(self, key: str) -> str:
        self.reads += 1
        raise ConnectionError("Redis is down")


async def test_redis_down_keeps_the_last_token_without_asking_again_and_again(real: Settings, redis: Redis) -> None:
    creds = Credentials(real, redis)
    await creds.store_access(NEW, source="api")
    assert await creds.access() == NEW
    down = DownRedis()
    creds._redis = down  # type: ignore[assignment]  # the same service, its Redis gone
    assert [await creds.access() for _ in range(5)] == [NEW] * 5  # the order path keeps the token it had
    assert down.reads == 1  # and a feed reconnect does not wait on a Redis timeout each time
