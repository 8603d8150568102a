"""The expiry watch: one `[WARNING]` line and one event per token and state, before and at expiry."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from libs.common.clock import ManualClock
from libs.common.credentials import Credentials
from libs.common.logging import setup_logging
from libs.common.positions import PositionStore
from libs.common.settings import Settings
from services.api.token_probe import TokenProbe
from services.api.token_watch import ExpiryWatch

pytestmark = pytest.mark.integration


def jwt(exp: float) -> str:
    body = base64.urlsafe_b64encode(json.dumps({"sub": "SIM001", "exp": exp}).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJIUzI1NiJ9.{body}.c2lnbmF0dXJl"


async def test_warns_once_before_and_once_at_expiry_per_token(settings: Settings, redis: Redis) -> None:
    clock = ManualClock(1_800_000_000.0)
    s = settings.model_copy(
        update={
            "upstox_access_token": SecretStr(jwt(clock.now() + 100)),
            "upstox_analytics_token": SecretStr(jwt(clock.now() + 1000)),
            "credentials_key": SecretStr("watch-key-0123456789"),
            "token_expiry_warn_s": 60.0,
        }
    )
    out = io.StringIO()
    setup_logging("api", s, stream=out)
    credentials = Credentials(s, redis, clock)
    store = PositionStore(redis, clock)
    probe = TokenProbe(s, clock, httpx.AsyncClient(transport=httpx.MockTransport(broker)), credentials)
    watch = ExpiryWatch(s, credentials, probe, redis, clock)

    async def step(seconds: float) -> None:
        clock.advance(seconds)
        await watch.check_once()

    await step(0)  # 100 s left: valid, nothing said
    assert "[WARNING]" not in out.getvalue()
    await step(45)  # 55 s left: expiring
    await step(1)
    await step(60)  # past: expired
    await step(1)
    lines = [line for line in out.getvalue().splitlines() if "[WARNING]" in line]
    assert len(lines) == 2, lines
    assert "access token expires at" in lines[0] and "(in 1 min)" in lines[0]
    assert "access token expired at" in lines[1] and "orders, GTTs and positions are refused" in lines[1]
    events = [(e["kind"], e["token"]) for e in reversed(await store.recent_events())]
    assert events == [("token_expiring", "access"), ("token_expired", "access")]

    # A new token starts afresh; the analytics token gets its own warning when its time comes.
    await credentials.store_access(jwt(clock.now() + 30), source="api")
    await step(1)
    await step(842)  # 950 s in: the analytics token has 50 s left
    lines = [line for line in out.getvalue().splitlines() if "[WARNING]" in line]
    assert len(lines) == 5, lines
    assert "access token expires at" in lines[2] and "access token expired at" in lines[3]
    assert "analytics token expires at" in lines[4]
    assert jwt(clock.now()) not in out.getvalue()


REFUSED: set[str] = set()


def broker(request: httpx.Request) -> httpx.Response:
    """Upstox's profile and LTP endpoints: 401 for a token in REFUSED."""
    if request.headers["authorization"].removeprefix("Bearer ") in REFUSED:
        return httpx.Response(401, json={"status": "error", "errors": [{"error_code": "UDAPI100050"}]})
    return httpx.Response(200, json={"status": "success", "data": {"user_id": "SIM001"}})


async def test_a_refused_token_is_said_once_and_its_return_too(settings: Settings, redis: Redis) -> None:
    clock = ManualClock(1_800_000_000.0)
    token = jwt(clock.now() + 86400)
    s = settings.model_copy(update={"upstox_access_token": SecretStr(token), "token_probe_cache_s": 0.0})
    out = io.StringIO()
    setup_logging("api", s, stream=out)
    credentials = Credentials(s, redis, clock)
    probe = TokenProbe(s, clock, httpx.AsyncClient(transport=httpx.MockTransport(broker)), credentials)
    watch = ExpiryWatch(s, credentials, probe, redis, clock)
    await watch.check_once()
    REFUSED.add(token)
    try:
        await watch.check_once()
        await watch.check_once()
    finally:
        REFUSED.discard(token)
    await watch.check_once()
    await watch.check_once()
    events = [(e["kind"], e["token"]) for e in reversed(await PositionStore(redis, clock).recent_events())]
    assert events == [("token_rejected", "access"), ("token_ok", "access")]
    assert "[WARNING] Upstox refuses the access token: profile endpoint rejected the token (401)" in out.getvalue()
    assert token not in out.getvalue()
