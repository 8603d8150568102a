from __future__ import annotations

import time

import httpx
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from libs.common import keys
from libs.common.clock import SystemClock
from libs.common.models import FeedState
from libs.common.positions import PositionStore
from libs.common.settings import Settings
from tests.api.conftest import ApiFactory, set_feed

pytestmark = pytest.mark.integration

STATUS = "/api/v1/monitoring/status"
TOKEN = "real-upstox-token-0123456789"


class Profile:
    """A fake Upstox profile endpoint: answers `status_code`, counts calls, records the token it saw."""

    def __init__(self, status_code: int = 200) -> None:
        self.status_code = status_code
        self.calls = 0
        self.seen: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        self.seen.append(request.headers.get("authorization", ""))
        if self.status_code == 0:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(self.status_code, json={"status": "success" if self.status_code == 200 else "error"})


def upstox(settings: Settings, **kw: object) -> Settings:
    return settings.model_copy(update={"upstox_access_token": SecretStr(TOKEN), **kw})


async def test_status_reports_token_redis_services_and_market(
    make_api: ApiFactory, api_settings: Settings, redis: Redis
) -> None:
    profile = Profile(200)
    now = time.time()
    await redis.set(keys.heartbeat("feed"), f"{now - 2:.3f}")
    await redis.set(keys.heartbeat("monitor"), f"{now - 1:.3f}")
    await set_feed(redis, state=FeedState.RECONNECTING, connected=False, token_ok=True, last_error="DNS failed")
    await redis.hset(keys.SERVICES_STATUS, mapping={"monitor.last_broker_error": "broker answered 503"})
    await PositionStore(redis, SystemClock()).publish_event("close_failed", "BOSCHLTD", error="503")
    # No expiry warning: the token's 03:30 IST expiry is within the default window from 21:00 UTC, and its
    # `token_expiring` event would then be the newest one (tests/api/test_token_watch.py covers that event).
    settings = upstox(api_settings, upstox_api_base="https://api.upstox.test", token_expiry_warn_s=0)
    async with make_api(settings, http=httpx.AsyncClient(transport=httpx.MockTransport(profile))) as client:
        resp = await client.get(STATUS)
        again = await client.get(STATUS)

    assert resp.status_code == 200
    body = resp.json()
    assert body["market"] == "upstox"
    assert body["api_base"] == "https://api.upstox.test"
    assert body["token"]["valid"] is True
    assert body["token"]["checked_at"].endswith("+05:30")
    assert body["redis"]["reachable"] is True
    assert body["redis"]["latency_ms"] >= 0
    assert body["services"]["feed"] == {"alive": True, "heartbeat_age_s": pytest.approx(2, abs=1)}
    assert body["services"]["monitor"]["alive"] is True
    assert body["services"]["api"]["alive"] is True  # its own heartbeat, beaten by the lifespan
    assert body["services"]["sim"] == {"alive": False, "heartbeat_age_s": None}
    assert body["feed"]["state"] == "reconnecting"
    assert body["feed"]["last_error"] == "DNS failed"
    assert body["notes"] == {"monitor.last_broker_error": "broker answered 503"}
    assert body["recent_events"][0]["kind"] == "close_failed"
    assert profile.calls == 1  # the second request reused the cached verdict
    assert profile.seen == [f"Bearer {TOKEN}"]
    assert TOKEN not in resp.text
    assert again.json()["token"] == body["token"]


@pytest.mark.parametrize(
    ("code", "valid", "words"),
    [(401, False, "rejected the token (401)"), (500, None, "answered 500"), (0, None, "unreachable: ConnectError")],
)
async def test_token_problems_are_reported_without_the_token(
    make_api: ApiFactory, api_settings: Settings, redis: Redis, code: int, valid: bool | None, words: str
) -> None:
    profile = Profile(code)
    settings = upstox(api_settings)
    async with make_api(settings, http=httpx.AsyncClient(transport=httpx.MockTransport(profile))) as client:
        body = (await client.get(STATUS)).json()
    assert body["token"]["valid"] is valid
    assert words in body["token"]["detail"]
    assert TOKEN not in str(body)


async def test_simulator_mode_and_the_probe_cache_expiry(
    make_api: ApiFactory, api_settings: Settings, redis: Redis
) -> None:
    profile = Profile(200)
    settings = api_settings.model_copy(update={"token_probe_cache_s": 0.0})
    async with make_api(settings, http=httpx.AsyncClient(transport=httpx.MockTransport(profile))) as client:
        body = (await client.get(STATUS)).json()
        await client.get(STATUS)
    assert body["market"] == "simulator"
    assert body["api_base"] == f"http://{settings.sim_host}:{settings.sim_port}"
    assert profile.calls == 2
    assert profile.seen[0] == "Bearer sim-access-token"
    assert "sim-access-token" not in str(body)
