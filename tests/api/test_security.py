from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from libs.common.settings import ConfigError, Settings
from services.api.app import create_app
from tests.api.conftest import BOSCH, ApiFactory

pytestmark = pytest.mark.integration

KEY = "k3y-for-the-api-0123456789"


def test_beyond_loopback_without_a_key_refuses_to_start(api_settings: Settings) -> None:
    with pytest.raises(ConfigError, match=r"API_KEY must be set when API_HOST is '0\.0\.0\.0'"):
        create_app(api_settings.model_copy(update={"api_host": "0.0.0.0"}))
    for host in ("127.0.0.1", "localhost", "::1"):
        create_app(api_settings.model_copy(update={"api_host": host}))


async def test_on_loopback_without_a_key_mutations_are_open(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/v1/positions", json=BOSCH)).status_code == 201


async def test_with_a_key_every_mutation_requires_it(
    make_api: ApiFactory, api_settings: Settings, redis: Redis
) -> None:
    settings = api_settings.model_copy(update={"api_host": "0.0.0.0", "api_key": SecretStr(KEY)})
    async with make_api(settings) as client:
        mutations = [
            ("POST", "/api/v1/positions", BOSCH),
            ("PATCH", "/api/v1/positions/BOSCHLTD", {"stop_loss": 700}),
            ("POST", "/api/v1/monitoring/emergency-close-position", {"symbol": "BOSCHLTD", "reason": "emergency"}),
        ]
        for method, url, body in mutations:
            for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": f"Basic {KEY}"}):
                resp = await client.request(method, url, json=body, headers=headers)
                assert resp.status_code == 401, (method, url, headers)
                assert KEY not in resp.text
                assert resp.headers["WWW-Authenticate"] == "Bearer"
        assert (await client.post("/api/v1/positions", json=BOSCH, headers={"X-API-Key": KEY})).status_code == 201
        patched = await client.patch(
            "/api/v1/positions/BOSCHLTD", json={"stop_loss": 700}, headers={"Authorization": f"Bearer {KEY}"}
        )
        assert patched.status_code == 200
        # reading needs no key
        assert (await client.get("/api/v1/positions")).status_code == 200
        assert (await client.get("/api/v1/monitoring/connection-health")).status_code == 200


async def test_bodies_over_the_limit_are_413(make_api: ApiFactory, api_settings: Settings, redis: Redis) -> None:
    async with make_api(api_settings.model_copy(update={"api_max_body_bytes": 1024})) as client:
        big = {"symbol": "BOSCHLTD", "reason": "emergency", "pad": "x" * 2000}
        resp = await client.post("/api/v1/monitoring/emergency-close-position", json=big)
        assert resp.status_code == 413
        assert resp.json() == {"detail": "request body larger than 1024 bytes"}

        async def chunks():  # no Content-Length: the limit still holds
            for _ in range(4):
                yield b"x" * 400

        chunked = await client.post("/api/v1/positions", content=chunks(), headers={"content-type": "application/json"})
        assert chunked.status_code == 413
        assert (await client.post("/api/v1/positions", json=BOSCH)).status_code == 201


async def test_docs_and_openapi_are_served(client: httpx.AsyncClient) -> None:
    assert (await client.get("/docs")).status_code == 200
    spec = (await client.get("/openapi.json")).json()
    assert {
        "/api/v1/monitoring/connection-health",
        "/api/v1/monitoring/emergency-close-position",
        "/api/v1/monitoring/status",
        "/api/v1/positions",
        "/api/v1/positions/closed",
        "/api/v1/positions/{symbol}",
    } <= set(spec["paths"])
