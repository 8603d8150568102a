from __future__ import annotations

import json

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
        # reading needs the key too
        for url in ("/api/v1/positions", "/api/v1/positions/closed", "/api/v1/monitoring/connection-health"):
            assert (await client.get(url)).status_code == 401, url
            assert (await client.get(url, headers={"X-API-Key": KEY})).status_code == 200, url
        assert (await client.get("/api/v1/monitoring/status", headers={"X-API-Key": "wrong"})).status_code == 401
    async with make_api(settings.model_copy(update={"api_public_reads": True})) as client:
        assert (await client.get("/api/v1/positions")).status_code == 200  # API_PUBLIC_READS: reads open
        assert (await client.post("/api/v1/positions", json=BOSCH)).status_code == 401  # mutations never


async def test_a_foreign_host_is_refused_and_changes_nothing(client: httpx.AsyncClient) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends `Host: evil.example`."""
    assert (await client.post("/api/v1/positions", json=BOSCH)).status_code == 201
    evil = {"Host": "evil.example"}
    requests = [
        ("PATCH", "/api/v1/positions/BOSCHLTD", {"stop_loss": 1}),
        ("POST", "/api/v1/monitoring/emergency-close-position", {"symbol": "BOSCHLTD", "reason": "emergency"}),
        ("GET", "/api/v1/positions", None),
    ]
    for method, url, body in requests:
        resp = await client.request(method, url, json=body, headers=evil)
        assert resp.status_code == 400, (method, url)
        assert resp.text == "Invalid host header"
    position = (await client.get("/api/v1/positions/BOSCHLTD")).json()
    assert (position["state"], position["stop_loss"]) == ("open", 698.25)
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
        assert (await client.get("/api/v1/positions", headers={"Host": host})).status_code == 200, host


async def test_api_allowed_hosts_extends_the_loopback_names(
    make_api: ApiFactory, api_settings: Settings, redis: Redis
) -> None:
    async with make_api(api_settings.model_copy(update={"api_allowed_hosts": ["guard.lan"]})) as client:
        assert (await client.get("/api/v1/positions", headers={"Host": "guard.lan:8000"})).status_code == 200
        assert (await client.get("/api/v1/positions", headers={"Host": "evil.example"})).status_code == 400


async def test_a_body_without_a_json_content_type_is_refused(client: httpx.AsyncClient) -> None:
    """A page's cross-site "simple" POST (text/plain, no CORS preflight) must not reach an endpoint."""
    for headers in ({"content-type": "text/plain"}, {}):
        resp = await client.post("/api/v1/positions", content=json.dumps(BOSCH), headers=headers)
        assert resp.status_code == 422, headers
    assert (await client.get("/api/v1/positions")).json()["positions"] == []


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
