"""The dashboard page, its snapshot and the api's `/metrics`, in-process on a private Redis.

The live stream itself, driven by a real browser, is in `tests/e2e/test_dashboard.py`.
"""

from __future__ import annotations

import json
import re
import time
from html.parser import HTMLParser

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from redis.asyncio import Redis

from libs.common import keys
from libs.common.models import FeedState
from libs.common.settings import Settings
from services.api.routes.dashboard import REFRESH_S, snapshot, updates
from tests.api.conftest import BOSCH, ApiFactory, CountingBroker, feed_live, set_feed, write_prices
from tests.helpers import free_port

pytestmark = pytest.mark.integration


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)


def _sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


async def test_the_page_loads_nothing_from_elsewhere(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    parser = _Assets()
    parser.feed(page.text)
    assets = [u for u in parser.urls if not u.startswith("data:")]
    assert sorted(assets) == ["/dashboard/dashboard.css", "/dashboard/dashboard.js"]
    for url in assets:
        resp = await client.get(url)
        assert resp.status_code == 200 and resp.content, url
    script = (await client.get("/dashboard/dashboard.js")).text
    assert not re.search(r"https?://", script)  # no CDN, no third party
    assert "fetch(STREAM_URL" in script and "setInterval(connect" not in script  # pushed by the api, not polled
    assert "innerHTML" not in script and "textContent" in script  # data from Redis is never parsed as HTML


async def test_the_snapshot_has_what_the_page_shows(client: httpx.AsyncClient, redis: Redis) -> None:
    now = time.time()
    await set_feed(
        redis,
        state=FeedState.RECONNECTING,
        connected=False,
        network_errors=3,
        dns_resolver="Google DNS",
        outage_started_at=now - 50,
    )
    await write_prices(redis, now - 45, {"BOSCHLTD": "720.00"})
    await redis.xadd(keys.EVENTS_STREAM, {"event": "not json"})  # a corrupt entry is skipped, not fatal
    assert (await client.post("/api/v1/positions", json=BOSCH)).status_code == 201

    snap = await snapshot(client._transport.app.state.resources)  # type: ignore[attr-defined]

    assert snap["health"]["websocket"]["connected"] is False
    assert snap["health"]["websocket"]["network_errors"] == 3
    assert snap["health"]["advice_branch"] == "stale_cache"
    assert snap["health"]["price_cache"]["cache_entries"]["BOSCHLTD"]["status"] == "stale"
    assert snap["feed"]["resolver"] == "Google DNS" and snap["feed"]["outage_started_at"] == pytest.approx(now - 50)
    [position] = snap["positions"]
    assert (position["symbol"], position["ltp"], position["state"]) == ("BOSCHLTD", 720.0, "open")
    assert [e["kind"] for e in snap["events"]] == ["opened"]
    assert snap["closes"] == [] and snap["api_key_required"] is False
    assert snap["services"]["api"]["alive"] is True  # the app's own heartbeat
    assert snap["services"]["monitor"] == {"alive": False, "heartbeat_age_s": None}


async def test_metrics_count_the_api_closes_with_their_labels(
    make_api: ApiFactory, api_settings: Settings, redis: Redis
) -> None:
    async with make_api(api_settings, broker=CountingBroker()) as client:
        before = await client.get("/metrics")
        assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain")
        labels = {"reason": "emergency", "closed_by": "api", "price_source": "live"}
        counted = _sample(before.text, "guard_closes_total", **labels) or 0.0
        await feed_live(redis, time.time())
        await write_prices(redis, time.time(), {"BOSCHLTD": "740.00"})
        assert (await client.post("/api/v1/positions", json=BOSCH)).status_code == 201
        close = {"symbol": "BOSCHLTD", "reason": "emergency"}
        resp = await client.post("/api/v1/monitoring/emergency-close-position", json=close)
        assert resp.status_code == 200, resp.text

        after = (await client.get("/metrics")).text
        assert _sample(after, "guard_closes_total", **labels) == counted + 1
        assert (_sample(after, "guard_close_seconds_count") or 0) >= 1
        assert "guard_redis_errors_total" in after


async def test_the_stream_pushes_a_snapshot_at_once_on_an_event(make_api: ApiFactory, api_settings: Settings) -> None:
    async with make_api(api_settings) as client:
        res = client._transport.app.state.resources  # type: ignore[attr-defined]
        stream = updates(res)
        first = await anext(stream)
        assert first.event == "snapshot" and json.loads(first.data)["positions"] == []
        assert (await client.post("/api/v1/positions", json=BOSCH)).status_code == 201
        started = time.monotonic()
        second = await anext(stream)
        assert time.monotonic() - started < 0.8 * REFRESH_S  # woken by the "opened" event, not the timer
        assert [p["symbol"] for p in json.loads(second.data)["positions"]] == ["BOSCHLTD"]
        await stream.aclose()


async def test_the_stream_says_when_redis_cannot_be_read(make_api: ApiFactory, api_settings: Settings) -> None:
    unreachable = api_settings.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{free_port()}/0", "redis_retries": 0}
    )
    async with make_api(unreachable) as client:
        stream = updates(client._transport.app.state.resources)  # type: ignore[attr-defined]
        event = await anext(stream)
        assert event.event == "unavailable"
        assert "Redis unreachable" in json.loads(event.data)["detail"]
        await stream.aclose()


async def test_metrics_are_readable_without_the_key_other_reads_are_not(
    make_api: ApiFactory, api_settings: Settings
) -> None:
    async with make_api(api_settings.model_copy(update={"api_key": SecretStr("k3y")})) as client:
        assert (await client.get("/metrics")).status_code == 200  # Prometheus scrapes it like the exporters
        assert (await client.get("/api/v1/positions")).status_code == 401
