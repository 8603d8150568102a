from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from redis.asyncio import Redis

from libs.common import keys
from libs.common.clock import SystemClock
from libs.common.models import CloseReason, FeedState, PositionState
from libs.common.positions import PositionStore
from libs.common.settings import Settings
from tests.api.conftest import BOSCH, ApiFactory, CountingBroker, feed_live, set_feed, write_prices

pytestmark = pytest.mark.integration

CLOSE = "/api/v1/monitoring/emergency-close-position"


async def opened(client: httpx.AsyncClient, **changes: object) -> None:
    resp = await client.post("/api/v1/positions", json={**BOSCH, **changes})
    assert resp.status_code == 201, resp.text


async def test_close_answers_exactly_as_the_guide(client: httpx.AsyncClient, redis: Redis) -> None:
    now = time.time()
    await set_feed(redis, state=FeedState.RECONNECTING, connected=False)
    await write_prices(redis, now - 45, {"BOSCHLTD": "575.00"})
    await opened(client)

    resp = await client.post(CLOSE, json={"symbol": "BOSCHLTD", "reason": "stop_loss"})

    assert resp.status_code == 200, resp.text
    body = resp.json()
    guide = {
        "status": "success",
        "symbol": "BOSCHLTD",
        "entry_price": 735.00,
        "exit_price": 575.00,
        "pnl": -1600.00,  # (575 - 735) x 10
        "reason": "stop_loss",
        "message": "Position BOSCHLTD closed successfully",
    }
    assert {k: body[k] for k in guide} == guide
    assert body["quantity"] == 10
    assert body["order_id"] == "paper-1"
    assert 44 <= body["price_age_seconds"] <= 47
    assert body["price_source"] == "stale"
    assert body["closed_at"].endswith("+05:30")

    position = await PositionStore(redis, SystemClock()).get("BOSCHLTD")
    assert position is not None
    assert position.state is PositionState.CLOSED
    journal = (await client.get("/api/v1/positions/closed")).json()["closes"]
    assert [(c["symbol"], c["closed_by"], c["price_source"]) for c in journal] == [("BOSCHLTD", "api", "stale")]


@pytest.mark.parametrize(
    ("connected", "age_s", "source"), [(True, 1, "live"), (False, 5, "cached"), (False, 100, "stale")]
)
async def test_price_source_follows_the_layers(
    client: httpx.AsyncClient, redis: Redis, connected: bool, age_s: float, source: str
) -> None:
    now = time.time()
    if connected:
        await feed_live(redis, now)
    await write_prices(redis, now - age_s, {"BOSCHLTD": "700.00"})
    await opened(client)
    body = (await client.post(CLOSE, json={"symbol": "BOSCHLTD", "reason": "emergency"})).json()
    assert body["price_source"] == source
    assert body["exit_price"] == 700.0


async def test_connected_status_with_an_expired_feed_heartbeat_is_a_cached_price_not_live(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    """The feed died while connected: `feed:status` still says so, but without a heartbeat the price is cached."""
    now = time.time()
    await feed_live(redis, now)
    await redis.delete(keys.heartbeat("feed"))
    await write_prices(redis, now - 5, {"BOSCHLTD": "700.00"})
    await opened(client)
    body = (await client.post(CLOSE, json={"symbol": "BOSCHLTD", "reason": "emergency"})).json()
    assert (body["price_source"], body["exit_price"]) == ("cached", 700.0)


async def test_unknown_symbol_is_404_and_a_closed_one_409(client: httpx.AsyncClient, redis: Redis) -> None:
    missing = await client.post(CLOSE, json={"symbol": "NOSUCH", "reason": "emergency"})
    assert missing.status_code == 404
    assert missing.json() == {"detail": "no open position for NOSUCH"}

    await write_prices(redis, time.time(), {"BOSCHLTD": "700.00"})
    await opened(client)
    assert (await client.post(CLOSE, json={"symbol": "BOSCHLTD", "reason": "emergency"})).status_code == 200
    again = await client.post(CLOSE, json={"symbol": "BOSCHLTD", "reason": "emergency"})
    assert again.status_code == 409
    assert again.json()["detail"] == "position BOSCHLTD is already closed"

    await opened(client, symbol="KAYNES", instrument_key="NSE_EQ|INE918Z01012", entry_price=200, stop_loss=190)
    await PositionStore(redis, SystemClock()).claim("KAYNES", CloseReason.STOP_LOSS)  # the monitor got there first
    closing = await client.post(CLOSE, json={"symbol": "KAYNES", "reason": "emergency"})
    assert closing.status_code == 409
    assert closing.json()["detail"] == "position KAYNES is already closing"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"symbol": "BOSCHLTD", "reason": "panic"}, "reason: Input should be 'stop_loss', 'take_profit' or"),
        ({"symbol": "BOSCHLTD"}, "reason: Field required"),
        ({"symbol": "BOSCHLTD", "reason": "emergency", "force": True}, "force: Extra inputs are not permitted"),
        ({"symbol": "", "reason": "emergency"}, "symbol: String should have at least 1 character"),
        ({"symbol": "BOSCH:LTD", "reason": "emergency"}, "symbol: String should match pattern"),
    ],
)
async def test_bad_bodies_are_422_with_a_readable_message(
    client: httpx.AsyncClient, body: dict[str, object], words: str
) -> None:
    resp = await client.post(CLOSE, json=body)
    assert resp.status_code == 422
    assert words in resp.json()["message"]
    assert isinstance(resp.json()["detail"], list)


async def test_not_json_is_422(client: httpx.AsyncClient) -> None:
    resp = await client.post(CLOSE, content=b"{nope", headers={"content-type": "application/json"})
    assert resp.status_code == 422
    assert resp.json()["message"]


@pytest.mark.parametrize("status", [502, 503])
async def test_a_broker_failure_leaves_the_position_open_and_says_why(
    make_api: ApiFactory, api_settings: Settings, redis: Redis, status: int
) -> None:
    await write_prices(redis, time.time(), {"BOSCHLTD": "700.00"})
    async with make_api(api_settings, broker=CountingBroker(fail_status=status)) as client:
        await opened(client)
        resp = await client.post(CLOSE, json={"symbol": "BOSCHLTD", "reason": "emergency"})
        assert resp.status_code == status
        assert resp.json()["detail"] == (
            f"broker did not close BOSCHLTD: broker answered {status} (UDAPI100500: down); position stays open"
        )
        position = (await client.get("/api/v1/positions/BOSCHLTD")).json()
        assert position["state"] == "open"
        assert str(status) in position["last_error"]
        assert position["close_attempts"] == 1


async def test_no_cached_price_reaches_the_broker_without_one(
    make_api: ApiFactory, api_settings: Settings, redis: Redis
) -> None:
    async with make_api(api_settings) as client:  # PaperBroker cannot fill without a price: 503
        await opened(client)
        resp = await client.post(CLOSE, json={"symbol": "BOSCHLTD", "reason": "emergency"})
        assert resp.status_code == 503
        assert "none is cached" in resp.json()["detail"]


async def test_a_price_older_than_the_cache_ttl_is_not_a_decision_price(
    make_api: ApiFactory, api_settings: Settings, redis: Redis
) -> None:
    """Layer 3 in the emergency path: a price past PRICE_CACHE_TTL_S (still in Redis: the feed's expiry can be
    longer than the api's setting) is not used; the broker prices the close (PaperBroker cannot: 503)."""
    await write_prices(redis, time.time() - api_settings.price_cache_ttl_s - 1, {"BOSCHLTD": "700.00"}, ttl_s=1000)
    async with make_api(api_settings) as client:
        await opened(client)
        resp = await client.post(CLOSE, json={"symbol": "BOSCHLTD", "reason": "emergency"})
        assert resp.status_code == 503
        assert "none is cached" in resp.json()["detail"]


async def test_fifty_concurrent_closes_one_success_one_order(
    make_api: ApiFactory, api_settings: Settings, redis: Redis
) -> None:
    await write_prices(redis, time.time(), {"BOSCHLTD": "700.00"})
    broker = CountingBroker(delay_s=0.05)
    async with make_api(api_settings, broker=broker) as client:
        await opened(client)
        # Warm the app's Redis pool: 50 requests at once leave 50 open connections for the racing closes.
        await asyncio.gather(*(client.get("/api/v1/positions/BOSCHLTD") for _ in range(50)))
        responses = await asyncio.gather(
            *(client.post(CLOSE, json={"symbol": "BOSCHLTD", "reason": "emergency"}) for _ in range(50))
        )
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] + [409] * 49
    assert broker.orders == 1
    assert await redis.llen(keys.CLOSED_JOURNAL) == 1


async def test_the_same_idempotency_key_returns_the_first_result(
    make_api: ApiFactory, api_settings: Settings, redis: Redis
) -> None:
    await write_prices(redis, time.time(), {"BOSCHLTD": "700.00"})
    broker = CountingBroker(delay_s=0.1)
    headers = {"Idempotency-Key": "close-bosch-1"}
    body = {"symbol": "BOSCHLTD", "reason": "emergency"}
    async with make_api(api_settings, broker=broker) as client:
        await opened(client)
        concurrent = await asyncio.gather(*(client.post(CLOSE, json=body, headers=headers) for _ in range(5)))
        later = await client.post(CLOSE, json=body, headers=headers)
        other = await client.post(CLOSE, json={**body, "reason": "stop_loss"}, headers=headers)
        fresh_key = await client.post(CLOSE, json=body, headers={"Idempotency-Key": "close-bosch-2"})
    assert [r.status_code for r in concurrent] == [200] * 5
    assert len({r.text for r in concurrent}) == 1
    assert later.status_code == 200
    assert later.json() == concurrent[0].json()
    assert later.headers["Idempotent-Replayed"] == "true"
    assert broker.orders == 1
    assert other.status_code == 422
    assert other.json()["message"] == "Idempotency-Key: this Idempotency-Key was used for a different request"
    assert fresh_key.status_code == 409  # a new key acts again, and the position is already closed
    assert await redis.ttl(keys.idempotency("close-bosch-1")) > 86000


async def test_a_failed_attempt_does_not_use_up_its_key(
    make_api: ApiFactory, api_settings: Settings, redis: Redis
) -> None:
    await write_prices(redis, time.time(), {"BOSCHLTD": "700.00"})
    broker = CountingBroker(fail_status=503)
    headers = {"Idempotency-Key": "retry-me"}
    body = {"symbol": "BOSCHLTD", "reason": "emergency"}
    async with make_api(api_settings, broker=broker) as client:
        await opened(client)
        assert (await client.post(CLOSE, json=body, headers=headers)).status_code == 503
        broker.fail_status = None
        retried = await client.post(CLOSE, json=body, headers=headers)
    assert retried.status_code == 200
    assert "Idempotent-Replayed" not in retried.headers
    assert broker.orders == 2


async def test_a_killed_feed_is_not_live_even_though_its_status_says_connected(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    """SIGKILL leaves `connected` in feed:status; the heartbeat stops: the close records cached, with its true age."""
    now = time.time()
    await feed_live(redis, now - 20)  # the last beat and status write of a feed killed 20 s ago
    await write_prices(redis, now - 20, {"BOSCHLTD": "700.00"})
    await opened(client)
    body = (await client.post(CLOSE, json={"symbol": "BOSCHLTD", "reason": "emergency"})).json()
    assert body["price_source"] == "cached"
    assert 19 <= body["price_age_seconds"] <= 22
    journal = (await client.get("/api/v1/positions/closed")).json()["closes"]
    assert [(c["price_source"], 19 <= c["price_age_s"] <= 22) for c in journal] == [("cached", True)]
