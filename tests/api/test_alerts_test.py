"""POST /api/v1/alerts/test against a real HTTP receiver on loopback (the apprise json:// target)."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from libs.common.settings import Settings
from tests.alerts.receiver import Receiver
from tests.api.conftest import ApiFactory
from tests.helpers import free_port

pytestmark = pytest.mark.integration


async def test_test_alert_reports_per_url_whether_it_went_out(make_api: ApiFactory, api_settings: Settings) -> None:
    dead = f"json://127.0.0.1:{free_port()}/?cto=1&rto=1"  # nothing listens there
    with Receiver() as receiver:
        urls = [SecretStr(receiver.url), SecretStr(dead), SecretStr("not-a-scheme://x"), SecretStr(receiver.url)]
        async with make_api(api_settings.model_copy(update={"alert_urls": urls})) as client:
            resp = await client.post("/api/v1/alerts/test")
            assert resp.status_code == 200, resp.text
            body = resp.json()
            receiver.status = 500
            failing = (await client.post("/api/v1/alerts/test")).json()
    assert (body["sent"], body["failed"]) == (2, 2)
    rows = body["targets"]
    assert [(r["index"], r["sent"]) for r in rows] == [(1, True), (2, False), (3, False), (4, True)]
    assert rows[0]["target"] == f"json://127.0.0.1:{receiver.port}" and rows[0]["error"] == ""
    assert "Connection error" in rows[1]["error"] and rows[2]["error"] == "not a valid apprise URL"
    assert [r.title for r in receiver.requests] == ["[INFO] Test alert from the Upstox resilience guard"] * 4
    assert [r["sent"] for r in failing["targets"]] == [False, False, False, False]
    assert "500" in failing["targets"][0]["error"]


async def test_test_alert_without_urls_says_alerts_go_to_the_log(client: object) -> None:
    resp = await client.post("/api/v1/alerts/test")  # type: ignore[attr-defined]
    assert resp.status_code == 200
    assert resp.json()["targets"] == [] and "log only" in resp.json()["message"]


async def test_test_alert_needs_the_api_key_beyond_loopback(make_api: ApiFactory, api_settings: Settings) -> None:
    settings = api_settings.model_copy(update={"api_host": "0.0.0.0", "api_key": SecretStr("k" * 32)})
    async with make_api(settings) as client:
        assert (await client.post("/api/v1/alerts/test")).status_code == 401
        assert (await client.post("/api/v1/alerts/test", headers={"X-API-Key": "k" * 32})).status_code == 200
