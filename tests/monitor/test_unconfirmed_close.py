"""A close whose order may have reached the broker is never retried blindly: it stays closing until reconciled.

Covers the fix in libs/common (BrokerOutcomeUnknown): before it, a fill that was not confirmed in time reopened
the position and the next check sent a second order while the first could still fill.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from libs.common.broker import BrokerError, BrokerOutcomeUnknown, Fill, UpstoxBroker, sending_before
from libs.common.clock import ManualClock
from libs.common.closing import Closer, CloseRequest, close_tag
from libs.common.dns import HostResolver
from libs.common.models import CloseReason, CloseRecord, Position, PositionState, PriceSource
from libs.common.money import Paise
from libs.common.positions import PositionStore
from libs.common.settings import Settings
from tests.monitor.conftest import LogLines, ScriptedBroker, long_bosch, set_feed, write_price

pytestmark = pytest.mark.integration  # some tests here use the private Redis

ORDER = {"status": "success", "data": {"order_ids": ["2601070001"]}}


async def resolves_anything(host: str) -> str:
    return "127.0.0.1"


def upstox_with(settings: Settings, handler: Any) -> UpstoxBroker:
    resolver = HostResolver(
        fallback_servers=[], port=53, timeout_s=1, remember_s=0, clock=ManualClock(), system=resolves_anything
    )
    broker = UpstoxBroker(
        settings.model_copy(update={"upstox_api_base": "http://b", "upstox_order_base": "http://b"}),
        fill_timeout_s=0.2,
        resolver=resolver,
    )
    broker._http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return broker


def filled(quantity: int) -> dict[str, Any]:
    return {"status": "success", "data": {**details("complete")["data"], "filled_quantity": quantity}}


def details(status: str) -> dict[str, Any]:
    return {"status": "success", "data": {"order_id": "2601070001", "status": status, "average_price": 575.0}}


@pytest.mark.parametrize(
    ("handler", "unknown"),
    [
        (lambda r: httpx.Response(200, json=ORDER if r.method == "POST" else details("open")), True),  # never fills
        (lambda r: httpx.Response(200, json=ORDER) if r.method == "POST" else httpx.Response(503, json={}), True),
        (lambda r: (_ for _ in ()).throw(httpx.ReadTimeout("slow", request=r)), True),  # sent, no answer
        (lambda r: (_ for _ in ()).throw(httpx.ConnectError("refused", request=r)), False),  # never sent
        (lambda r: httpx.Response(200, json=ORDER if r.method == "POST" else details("rejected")), False),
        # a 5xx on the place call says nothing about the order behind the gateway
        (lambda r: httpx.Response(503, json={"errors": [{"error_code": "UDAPI100500", "message": "down"}]}), True),
        (lambda r: httpx.Response(504, text="<html>504 Gateway Time-out</html>"), True),
        (lambda r: httpx.Response(429, json={"errors": [{"error_code": "UDAPI10005", "message": "Too Many"}]}), False),
    ],
)
async def test_upstox_broker_says_when_an_order_may_have_been_placed(handler: Any, unknown: bool) -> None:
    broker = upstox_with(Settings(_env_file=None), handler)  # type: ignore[call-arg]  # no Redis: a unit test
    with pytest.raises(BrokerError) as info:
        await broker.close(long_bosch(), "guard-close-x", 57500)
    await broker.aclose()
    assert isinstance(info.value, BrokerOutcomeUnknown) is unknown


class UnconfirmedOnce(ScriptedBroker):
    """The first order is placed but its fill is not confirmed in time; it fills at the broker all the same.
    While `hidden`, the broker's order book does not show it yet (the tag finds nothing)."""

    def __init__(self, *, hidden: bool = False) -> None:
        super().__init__()
        self.hidden = hidden

    async def close(self, position: Position, tag: str, decision_price: Paise | None) -> Fill:
        fill = await super().close(position, tag, decision_price)
        if self.orders == 1:
            raise BrokerOutcomeUnknown(f"order {fill.order_id} placed, fill unconfirmed (timeout)")
        return fill

    async def find_by_tag(self, tag: str) -> Fill | None:
        return None if self.hidden else await super().find_by_tag(tag)


@pytest.mark.integration
async def test_an_unconfirmed_close_stays_closing_and_reconcile_finishes_it_without_a_second_order(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore, logs: LogLines, make_monitor: Any
) -> None:
    await store.open(long_bosch())
    await write_price(redis, settings, "BOSCHLTD", "575.00", clock.now())
    await set_feed(redis, settings, clock, live=True)
    broker = UnconfirmedOnce(hidden=True)
    monitor = make_monitor(broker)  # monitor_stuck_close_s=0.5
    await monitor.sweep_once()
    await monitor.drain()
    position = await store.get("BOSCHLTD")
    assert position is not None
    assert position.state is PositionState.CLOSING
    assert logs.lines("ERROR")[0].startswith("[ERROR] Close of BOSCHLTD unconfirmed: order with tag guard-close-")
    await monitor.sweep_once()  # not stuck yet: nothing happens
    await monitor.drain()
    assert broker.orders == 1
    broker.hidden = False  # the order book now shows it
    clock.advance(0.6)
    await monitor.sweep_once()  # stuck: reconcile finds the filled order by its tag
    await monitor.drain()
    assert broker.orders == 1
    position = await store.get("BOSCHLTD")
    assert position is not None
    assert position.state is PositionState.CLOSED
    journal = [r for r in await store.journal() if isinstance(r, CloseRecord)]
    assert [(r.order_id, r.closed_by) for r in journal] == [("paper-1", "reconcile")]
    failed = [e for e in await store.recent_events() if e["kind"] == "close_failed"]
    assert failed[0]["outcome"] == "unknown"


@pytest.mark.integration
async def test_an_unclear_order_answer_is_settled_by_its_tag_at_once(clock: ManualClock, store: PositionStore) -> None:
    await store.open(long_bosch())
    broker = UnconfirmedOnce()
    request = CloseRequest("BOSCHLTD", CloseReason.STOP_LOSS, "monitor", 57500, PriceSource.LIVE, 0.0)
    record = await Closer(store, broker, clock).close(request)
    assert broker.orders == 1 and (record.order_id, record.closed_by, record.exit_price) == (
        "paper-1",
        "monitor",
        57500,
    )
    position = await store.get("BOSCHLTD")
    assert position is not None and position.state is PositionState.CLOSED


@pytest.mark.integration
async def test_the_api_path_keeps_the_claim_too(redis: Redis, clock: ManualClock, store: PositionStore) -> None:
    await store.open(long_bosch())
    broker = UnconfirmedOnce(hidden=True)
    closer = Closer(store, broker, clock)
    request = CloseRequest("BOSCHLTD", CloseReason.EMERGENCY, "api", 57500, PriceSource.LIVE, 0.0)
    with pytest.raises(BrokerOutcomeUnknown):
        await closer.close(request)
    position = await store.get("BOSCHLTD")
    assert position is not None
    assert position.state is PositionState.CLOSING
    broker.hidden = False
    assert await broker.find_by_tag(close_tag(position.claim_id)) is not None


async def test_an_order_call_past_its_claim_deadline_is_never_sent() -> None:
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.method)
        return httpx.Response(200, json=ORDER if request.method == "POST" else filled(39))

    broker = upstox_with(Settings(_env_file=None), handler)  # type: ignore[call-arg]  # no Redis: a unit test
    with sending_before(time.monotonic() - 0.001), pytest.raises(BrokerError, match="nothing sent") as info:
        await broker.close(long_bosch(), "guard-close-x", 57500)
    assert not isinstance(info.value, BrokerOutcomeUnknown) and sent == []
    with sending_before(time.monotonic() + 5):
        assert (await broker.close(long_bosch(), "guard-close-x", 57500)).quantity == 39
    await broker.aclose()
    assert sent == ["POST", "GET"]


async def test_static_ips_are_read_once_a_minute() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(200, json={"status": "success", "data": {"primary_ip": "203.0.113.7"}})

    broker = upstox_with(Settings(_env_file=None), handler)  # type: ignore[call-arg]  # no Redis: a unit test
    assert await broker.static_ips() == {"primary_ip": "203.0.113.7"}
    assert await broker.static_ips() == {"primary_ip": "203.0.113.7"}
    await broker.aclose()
    assert calls == ["/v2/user/ip"]


@pytest.mark.parametrize(("protection", "sent"), [(-1, -1), (5, 5), (0, None)])
async def test_closing_orders_carry_the_market_protection(protection: float, sent: object) -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            bodies.append(json.loads(request.content))
            return httpx.Response(200, json=ORDER)
        return httpx.Response(
            200, json={"status": "success", "data": {**details("complete")["data"], "filled_quantity": 39}}
        )

    unit = Settings(_env_file=None, order_market_protection=protection)  # type: ignore[call-arg]  # no Redis
    broker = upstox_with(unit, handler)
    await broker.close(long_bosch(), "guard-close-x", 57500)
    await broker.aclose()
    assert bodies[0].get("market_protection") == sent and bodies[0]["order_type"] == "MARKET"
