"""The api and the broker's truth: registration checked against the broker's positions, DELETE without an order,
an emergency close with an unknown outcome answered 202 pending, and blocked order calls in /status."""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from libs.common import keys
from libs.common.broker import BrokerError, BrokerOutcomeUnknown, Fill, Holding, PaperBroker
from libs.common.broker_positions import BrokerPositions
from libs.common.clock import SystemClock
from libs.common.models import Position
from libs.common.money import Paise
from libs.common.order_gate import OrderGate
from libs.common.positions import PositionStore
from libs.common.settings import Settings
from tests.api.conftest import BOSCH, ApiFactory, write_prices
from tests.helpers import free_port

pytestmark = pytest.mark.integration

POSITIONS = "/api/v1/positions"
EMERGENCY = "/api/v1/monitoring/emergency-close-position"
BOSCH_KEY = "NSE_EQ|INE323A01026"


class HoldingBroker(PaperBroker):
    """A paper broker that reports positions (`holdings`; None: cannot be read) and counts orders."""

    def __init__(self, holdings: list[Holding] | None, *, unknown: bool = False) -> None:
        super().__init__()
        self.holdings = holdings
        self.unknown = unknown
        self.orders = 0

    async def positions(self) -> list[Holding] | None:
        if self.holdings is None:
            raise BrokerError("broker answered 503 (UDAPI100500: down)", status_code=503)
        return self.holdings

    async def close(self, position: Position, tag: str, decision_price: Paise | None) -> Fill:
        self.orders += 1
        if self.unknown:
            raise BrokerOutcomeUnknown("no answer from the broker: ReadTimeout")
        return await super().close(position, tag, decision_price)

    async def find_by_tag(self, tag: str) -> Fill | None:
        return None if self.unknown else await super().find_by_tag(tag)


@pytest.mark.parametrize(
    ("holdings", "held"),
    [
        ([], "nothing (flat) in product I"),
        ([Holding(BOSCH_KEY, "I", 4)], "4 long in product I"),
        ([Holding(BOSCH_KEY, "I", -10)], "10 short in product I"),
        ([Holding(BOSCH_KEY, "D", 10)], "nothing (flat) in product I"),
    ],
)
async def test_registering_what_the_broker_does_not_hold_is_409_naming_what_it_holds(
    make_api: ApiFactory, api_settings: Settings, redis: Redis, holdings: list[Holding], held: str
) -> None:
    async with make_api(api_settings, broker=HoldingBroker(holdings)) as client:
        resp = await client.post(POSITIONS, json=BOSCH)
    assert resp.status_code == 409, resp.text
    assert resp.json()["detail"].startswith(f"the broker holds {held} of BOSCHLTD; cannot guard 10 long")
    assert await redis.exists(keys.position("BOSCHLTD")) == 0


async def test_registering_what_the_broker_holds_is_accepted(make_api: ApiFactory, api_settings: Settings) -> None:
    async with make_api(api_settings, broker=HoldingBroker([Holding(BOSCH_KEY, "I", 15)])) as client:
        resp = await client.post(POSITIONS, json=BOSCH)
    assert resp.status_code == 201 and resp.json()["warning"] is None


async def test_unreadable_positions_accept_with_a_warning(make_api: ApiFactory, api_settings: Settings) -> None:
    async with make_api(api_settings, broker=HoldingBroker(None)) as client:
        resp = await client.post(POSITIONS, json=BOSCH)
    assert resp.status_code == 201, resp.text
    assert "not confirmed with the broker" in resp.json()["warning"] and "next reconcile" in resp.json()["warning"]


async def test_delete_stops_guarding_without_an_order(
    make_api: ApiFactory, api_settings: Settings, redis: Redis
) -> None:
    broker = HoldingBroker([Holding(BOSCH_KEY, "I", 10)])
    async with make_api(api_settings, broker=broker) as client:
        assert (await client.post(POSITIONS, json=BOSCH)).status_code == 201
        gone = await client.delete(f"{POSITIONS}/BOSCHLTD")
        assert gone.status_code == 200 and gone.json()["state"] == "removed"
        assert (await client.get(f"{POSITIONS}/BOSCHLTD")).status_code == 404
        assert (await client.delete(f"{POSITIONS}/BOSCHLTD")).status_code == 404
        assert (await client.post(EMERGENCY, json={"symbol": "BOSCHLTD", "reason": "emergency"})).status_code == 404
    assert broker.orders == 0
    assert await redis.smembers(keys.OPEN_POSITIONS) == set()
    assert await redis.hget(keys.FEED_SUBSCRIPTIONS, "BOSCHLTD") is None
    kinds = [e["kind"] for e in await PositionStore(redis, SystemClock()).recent_events()]
    assert kinds[0] == "removed"


async def test_delete_of_a_closing_position_is_409(make_api: ApiFactory, api_settings: Settings) -> None:
    broker = HoldingBroker([Holding(BOSCH_KEY, "I", 10)], unknown=True)
    async with make_api(api_settings, broker=broker) as client:
        await client.post(POSITIONS, json=BOSCH)
        await client.post(EMERGENCY, json={"symbol": "BOSCHLTD", "reason": "emergency"})
        resp = await client.delete(f"{POSITIONS}/BOSCHLTD")
    assert resp.status_code == 409 and "closing" in resp.json()["detail"]


async def test_an_unknown_outcome_is_202_pending_and_the_position_shows_closing(
    make_api: ApiFactory, api_settings: Settings, redis: Redis
) -> None:
    await write_prices(redis, SystemClock().now(), {"BOSCHLTD": "700.00"})
    broker = HoldingBroker([Holding(BOSCH_KEY, "I", 10)], unknown=True)
    async with make_api(api_settings, broker=broker) as client:
        await client.post(POSITIONS, json=BOSCH)
        resp = await client.post(EMERGENCY, json={"symbol": "BOSCHLTD", "reason": "emergency"})
        assert resp.status_code == 202, resp.text
        body = resp.json()
        assert body["status"] == "pending" and body["symbol"] == "BOSCHLTD" and len(body["claim_id"]) == 16
        assert "being reconciled" in body["message"] and "stays open" not in body["message"]
        position = (await client.get(f"{POSITIONS}/BOSCHLTD")).json()
        assert position["state"] == "closing"
        again = await client.post(EMERGENCY, json={"symbol": "BOSCHLTD", "reason": "emergency"})
        assert again.status_code == 409
    assert broker.orders == 1


async def test_an_emergency_close_of_a_position_already_flat_at_the_broker_sends_no_order(
    make_api: ApiFactory, api_settings: Settings
) -> None:
    broker = HoldingBroker([Holding(BOSCH_KEY, "I", 10)])
    async with make_api(api_settings, broker=broker) as client:
        await client.post(POSITIONS, json=BOSCH)
        broker.holdings = [Holding(BOSCH_KEY, "I", 0)]  # squared off in the app
        resp = await client.post(EMERGENCY, json={"symbol": "BOSCHLTD", "reason": "emergency"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["closed_by"] == "external" and resp.json()["order_id"] == ""
        closes = (await client.get(f"{POSITIONS}/closed")).json()["closes"]
    assert broker.orders == 0 and closes[0]["closed_by"] == "external"


async def test_status_shows_blocked_order_calls_with_the_reason(
    make_api: ApiFactory, api_settings: Settings, redis: Redis
) -> None:
    async with make_api(api_settings) as client:
        assert (await client.get("/api/v1/monitoring/status")).json()["orders"]["blocked"] is False
        await OrderGate(redis, SystemClock()).blocked("broker refused the order call: 403 (UDAPI1154: static IP)")
        orders = (await client.get("/api/v1/monitoring/status")).json()["orders"]
        assert orders["blocked"] is True and "UDAPI1154" in orders["reason"] and orders["since"].endswith("+05:30")
        await OrderGate(redis, SystemClock()).accepted()
        assert (await client.get("/api/v1/monitoring/status")).json()["orders"]["blocked"] is False


class UpstoxLikeBroker(HoldingBroker):
    async def static_ips(self) -> dict[str, object] | None:
        return {"primary_ip": "203.0.113.7", "secondary_ip": None}


async def test_status_shows_the_registered_static_ips_when_the_broker_is_upstox(
    make_api: ApiFactory, api_settings: Settings
) -> None:
    upstox = api_settings.model_copy(update={"upstox_access_token": SecretStr("a-real-token"), "broker": "upstox"})
    async with make_api(upstox, broker=UpstoxLikeBroker([])) as client:
        orders = (await client.get("/api/v1/monitoring/status")).json()["orders"]
    assert orders["static_ips"] == {"primary_ip": "203.0.113.7", "secondary_ip": None}
    async with make_api(api_settings, broker=UpstoxLikeBroker([])) as client:  # simulator mode: not asked
        assert (await client.get("/api/v1/monitoring/status")).json()["orders"]["static_ips"] is None


async def test_unreadable_positions_decide_from_a_recent_snapshot_else_the_guarded_quantity(
    make_api: ApiFactory, api_settings: Settings, redis: Redis
) -> None:
    broker = HoldingBroker([Holding(BOSCH_KEY, "I", 10)])
    await write_prices(redis, SystemClock().now(), {"BOSCHLTD": "700.00"})
    async with make_api(api_settings, broker=broker) as client:
        await client.post(POSITIONS, json=BOSCH)  # the registration's read leaves a snapshot: 10 held
        broker.holdings = None  # from now on the broker's positions cannot be read
        first = await client.post(EMERGENCY, json={"symbol": "BOSCHLTD", "reason": "emergency"})
        assert first.status_code == 200 and first.json()["quantity"] == 10 and broker.orders == 1

        await redis.delete(keys.BROKER_POSITIONS)  # no snapshot either: close the guarded quantity, say so
        await client.post(POSITIONS, json={**BOSCH, "quantity": 3})
        second = await client.post(EMERGENCY, json={"symbol": "BOSCHLTD", "reason": "emergency"})
        assert second.status_code == 200 and second.json()["quantity"] == 3 and broker.orders == 2


async def test_a_recent_snapshot_saying_flat_closes_as_external(
    make_api: ApiFactory, api_settings: Settings, redis: Redis
) -> None:
    broker = HoldingBroker([Holding(BOSCH_KEY, "I", 10)])
    async with make_api(api_settings, broker=broker) as client:
        await client.post(POSITIONS, json=BOSCH)
        broker.holdings = [Holding(BOSCH_KEY, "I", 0)]
        await BrokerPositions(redis, broker, SystemClock(), max_age_s=10).read()  # the reconcile's read: flat
        broker.holdings = None
        resp = await client.post(EMERGENCY, json={"symbol": "BOSCHLTD", "reason": "emergency"})
    assert resp.status_code == 200 and resp.json()["closed_by"] == "external" and broker.orders == 0


async def test_status_still_answers_when_redis_is_down(make_api: ApiFactory, api_settings: Settings) -> None:
    down = api_settings.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{free_port()}/0", "redis_retries": 0, "redis_connect_timeout_s": 0.2}
    )
    async with make_api(down) as client:
        resp = await client.get("/api/v1/monitoring/status")
    assert resp.status_code == 200, resp.text
    assert resp.json()["redis"]["reachable"] is False and resp.json()["orders"] is None
