"""Hot swap of the access token through the api, the notifier webhook and the two CLI commands, each checked
against a running simulator (the profile call is real), never showing the token."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from redis.asyncio import Redis

from libs.common import keys
from libs.common.clock import ist_iso
from libs.common.credentials import Credentials, token_exp
from libs.common.settings import Settings
from services.sim.server import Simulator, running_simulator
from services.sim.settings import SimSettings
from tests.api.conftest import ApiFactory
from tests.helpers import eventually, free_port, sealed_child

pytestmark = pytest.mark.integration

KEY = "test-credentials-key-0123456789"
CLIENT_ID = "client-42"
TOKEN_PATH = "/api/v1/auth/token"
NOTIFIER = "/api/v1/auth/notifier"


@pytest.fixture
async def sim(settings: Settings) -> AsyncIterator[Simulator]:
    redirect = f"http://127.0.0.1:{free_port()}/upstox/callback"
    s = SimSettings.of(
        settings,
        upstox_client_id=CLIENT_ID,
        upstox_client_secret=SecretStr("client-secret-42"),
        upstox_redirect_uri=redirect,
        sim_order_rate_limit_per_s=0,
    )
    async with running_simulator(s) as running:
        yield running


@pytest.fixture
def auth_settings(api_settings: Settings, sim: Simulator) -> Settings:
    return api_settings.model_copy(
        update={
            "upstox_api_base": sim.rest_url,
            "upstox_order_base": sim.rest_url,
            "credentials_key": SecretStr(KEY),
            "upstox_client_id": CLIENT_ID,
            "upstox_client_secret": sim.settings.upstox_client_secret,
            "upstox_redirect_uri": sim.settings.upstox_redirect_uri,
            "token_probe_cache_s": 0.0,
        }
    )


async def issue(sim: Simulator, kind: str = "access") -> str:
    token, _ = sim.tokens.issue(kind)  # type: ignore[arg-type]
    return token


async def stored(settings: Settings, redis: Redis) -> tuple[str, str]:
    held = await Credentials(settings, redis).held_access()
    return held.token, held.source


async def test_a_good_token_is_taken_and_never_shown(
    make_api: ApiFactory, auth_settings: Settings, sim: Simulator, redis: Redis
) -> None:
    token = await issue(sim)
    # The token dies at the next 03:30 IST on the wall clock: from 21:00 UTC it is within the default warning window
    # and rightly "expiring". This test is about taking and hiding it, so no warning window (tests/api/
    # test_token_watch.py covers "expiring").
    settings = auth_settings.model_copy(update={"token_expiry_warn_s": 0})
    async with make_api(settings, http=httpx.AsyncClient()) as client:
        resp = await client.post(TOKEN_PATH, json={"access_token": token})
        assert resp.status_code == 200, resp.text
        exp = token_exp(token)
        assert exp is not None
        assert resp.json()["expires_at"] == ist_iso(exp) and resp.json()["user_id"] == "SIM001"
        status = (await client.get("/api/v1/monitoring/status")).json()
        texts = [resp.text, str(status)]
    assert await stored(auth_settings, redis) == (token, "api")
    access = status["credentials"][0]
    assert access["kind"] == "access" and access["source"] == "api" and access["state"] == "valid"
    assert access["expiry_basis"] == "token" and status["orders"]["blocked"] is False
    assert status["token"]["valid"] is True
    assert all(token not in text for text in texts)
    assert token not in str(await redis.get(keys.ACCESS_TOKEN))


@pytest.mark.parametrize("kind", ["bogus", "analytics"])
async def test_a_token_the_broker_refuses_changes_nothing(
    make_api: ApiFactory, auth_settings: Settings, sim: Simulator, redis: Redis, kind: str
) -> None:
    token = "bogus-token-123456" if kind == "bogus" else await issue(sim, "analytics")
    async with make_api(auth_settings, http=httpx.AsyncClient()) as client:
        resp = await client.post(TOKEN_PATH, json={"access_token": token})
        short = await client.post(TOKEN_PATH, json={"access_token": "x"})
    assert resp.status_code == 422 and "UDAPI100050" in resp.json()["detail"], resp.text
    assert short.status_code == 422 and "x" not in str(short.json()["detail"][0].get("input", ""))
    assert token not in resp.text
    assert await redis.get(keys.ACCESS_TOKEN) is None


async def test_the_api_key_rule_applies(make_api: ApiFactory, auth_settings: Settings, sim: Simulator) -> None:
    keyed = auth_settings.model_copy(update={"api_key": SecretStr("api-key-123456")})
    token = await issue(sim)
    async with make_api(keyed, http=httpx.AsyncClient()) as client:
        assert (await client.post(TOKEN_PATH, json={"access_token": token})).status_code == 401
        ok = await client.post(TOKEN_PATH, json={"access_token": token}, headers={"X-API-Key": "api-key-123456"})
        assert ok.status_code == 200


async def test_the_notifier_checks_the_client_id_and_the_user(
    make_api: ApiFactory, auth_settings: Settings, sim: Simulator, redis: Redis
) -> None:
    token = await issue(sim)
    note: dict[str, Any] = {
        "client_id": CLIENT_ID,
        "user_id": "SIM001",
        "access_token": token,
        "token_type": "Bearer",
        "expires_at": "1780000000000",
        "issued_at": "1779900000000",
        "message_type": "access_token",
    }
    async with make_api(auth_settings, http=httpx.AsyncClient()) as client:
        wrong_client = await client.post(NOTIFIER, json={**note, "client_id": "someone-else"})
        assert wrong_client.status_code == 403 and token not in wrong_client.text
        assert await redis.get(keys.ACCESS_TOKEN) is None  # refused: nothing changed
        wrong_user = await client.post(NOTIFIER, json={**note, "user_id": "OTHER1"})
        assert wrong_user.status_code == 422
        assert await redis.get(keys.ACCESS_TOKEN) is None
        ok = await client.post(NOTIFIER, json=note)
        assert ok.status_code == 200, ok.text
    assert await stored(auth_settings, redis) == (token, "notifier")


def cli_env(settings: Settings) -> dict[str, str]:
    """The settings a CLI child needs (sealed: nothing else of this process's environment reaches it)."""
    return {
        "REDIS_URL": settings.redis_url,
        "CREDENTIALS_KEY": KEY,
        "UPSTOX_API_BASE": settings.api_base,
        "UPSTOX_ORDER_BASE": settings.order_base,
        "UPSTOX_CLIENT_ID": settings.upstox_client_id,
        "UPSTOX_CLIENT_SECRET": settings.upstox_client_secret.get_secret_value(),
        "UPSTOX_REDIRECT_URI": settings.upstox_redirect_uri,
    }


async def run_cli(tmp_path: Path, settings: Settings, *args: str, stdin: bytes = b"") -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.api",
        *args,
        **sealed_child(tmp_path, **cli_env(settings)),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(stdin), 60)
    return proc.returncode or 0, out.decode()


async def test_token_set_reads_stdin(tmp_path: Path, auth_settings: Settings, sim: Simulator, redis: Redis) -> None:
    code, out = await run_cli(tmp_path, auth_settings, "token", "set", stdin=b"bogus-token-98765\n")
    assert code == 1 and "UDAPI100050" in out and "bogus-token-98765" not in out
    assert await redis.get(keys.ACCESS_TOKEN) is None
    token = await issue(sim)
    code, out = await run_cli(tmp_path, auth_settings, "token", "set", stdin=f"{token}\n".encode())
    assert code == 0, out
    assert "access token replaced for user SIM001" in out and token not in out
    assert await stored(auth_settings, redis) == (token, "cli")


async def test_login_runs_the_oauth_dance_against_the_simulator(
    tmp_path: Path, auth_settings: Settings, redis: Redis
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.api",
        "login",
        "--timeout",
        "30",
        **sealed_child(tmp_path, **cli_env(auth_settings)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    while not any("/v2/login/authorization/dialog?" in line for line in lines):
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line, "".join(lines)
        lines.append(line)
    url = lines[-1].strip()
    assert "client_id=client-42" in url and "client-secret-42" not in url
    async with httpx.AsyncClient(timeout=10, follow_redirects=True) as browser:
        for _ in range(50):  # the callback server may still be starting
            try:
                page = await browser.get(url)
                break
            except httpx.ConnectError:
                await asyncio.sleep(0.1)
    assert page.status_code == 200 and "Login received" in page.text
    rest, _ = await asyncio.wait_for(proc.communicate(), 30)
    out = "".join(lines) + rest.decode()
    assert proc.returncode == 0, out
    token, source = await stored(auth_settings, redis)
    assert source == "login" and token.count(".") == 2 and token not in out


async def test_status_shows_a_rejected_token_and_the_analytics_token(
    make_api: ApiFactory, auth_settings: Settings, sim: Simulator
) -> None:
    analytics = await issue(sim, "analytics")
    s = auth_settings.model_copy(
        update={"upstox_access_token": SecretStr("revoked-token-0001"), "upstox_analytics_token": SecretStr(analytics)}
    )
    async with make_api(s, http=httpx.AsyncClient()) as client:
        status = (await client.get("/api/v1/monitoring/status")).json()
    access, market = status["credentials"]
    assert access["state"] == "rejected" and access["source"] == "env" and "UDAPI100050" in access["detail"]
    assert access["expiry_basis"] == "03:30 IST rule" and access["used_for"] == "orders, GTTs, positions, profile"
    assert market["kind"] == "analytics" and market["state"] == "valid" and market["expiry_basis"] == "token"
    assert status["orders"]["blocked"] is True
    assert status["orders"]["reason"].startswith("access token rejected")
    assert analytics not in str(status)


def _expiries(metrics: str) -> dict[str, float]:
    return {
        sample.labels["token"]: sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "guard_token_expiry_timestamp_seconds"
    }


async def test_metrics_show_each_token_expiry_as_status_reports_it(
    make_api: ApiFactory, auth_settings: Settings, sim: Simulator
) -> None:
    access, analytics = await issue(sim), await issue(sim, "analytics")
    access_exp, analytics_exp = token_exp(access), token_exp(analytics)
    assert access_exp is not None and analytics_exp is not None
    s = auth_settings.model_copy(
        update={"upstox_access_token": SecretStr(access), "upstox_analytics_token": SecretStr(analytics)}
    )
    # The gauge is the process's (one api per process); the expiry watch sets it on its first check.
    async with make_api(s, http=httpx.AsyncClient()) as client:
        await eventually(lambda: _expiries_are(client, {"access": access_exp, "analytics": analytics_exp}))
        status = (await client.get("/api/v1/monitoring/status")).json()
    shown = {c["kind"]: c["expires_at"] for c in status["credentials"]}
    assert shown == {"access": ist_iso(access_exp), "analytics": ist_iso(analytics_exp)}

    # No analytics token configured: its expiry is absent (the access token's is still there).
    only_access = auth_settings.model_copy(update={"upstox_access_token": SecretStr(access)})
    async with make_api(only_access, http=httpx.AsyncClient()) as client:
        await eventually(lambda: _expiries_are(client, {"access": access_exp}))
        status = (await client.get("/api/v1/monitoring/status")).json()
    assert [c["expires_at"] for c in status["credentials"]] == [ist_iso(access_exp)]


async def _expiries_are(client: httpx.AsyncClient, expected: dict[str, float]) -> bool:
    return _expiries((await client.get("/metrics")).text) == expected


async def test_login_gives_up_without_a_redirect_and_a_wrong_state_is_ignored(
    tmp_path: Path, auth_settings: Settings, redis: Redis
) -> None:
    code, out = await run_cli(tmp_path, auth_settings, "login", "--timeout", "1")
    assert code == 1 and "login failed: no redirect within 1 s" in out
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.api", "login", "--timeout", "30",
        **sealed_child(tmp_path, **cli_env(auth_settings)), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    while b"/v2/login/authorization/dialog?" not in (line := await asyncio.wait_for(proc.stdout.readline(), 30)):
        assert line
    callback = auth_settings.upstox_redirect_uri
    async with httpx.AsyncClient(timeout=10) as browser:
        for _ in range(50):
            try:
                await browser.get(callback, params={"code": "forged-code", "state": "not-this-login"})
                break
            except httpx.ConnectError:
                await asyncio.sleep(0.1)
    rest, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1 and "state does not match" in rest.decode()
    assert await redis.get(keys.ACCESS_TOKEN) is None
