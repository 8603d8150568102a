"""A close whose order may have reached the broker is never retried blindly: it stays closing until reconciled.

Covers the fix in libs/common (BrokerOutcomeUnknown): before it, a fill that was not confirmed in time reopened
the position and the next check sent a second order while the first could still fill.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from libs.common.broker import BrokerError, BrokerOutcomeUnknown, Fill, UpstoxBroker
from libs.common.clock import ManualClock
from libs.common.closing import Closer, CloseRequest, close_tag
from libs.common.models import CloseReason, CloseRecord, Position, PositionState, PriceSource
from libs.common.money import Paise
from libs.common.positions import PositionStore
from libs.common.settings import Settings
from tests.monitor.conftest import LogLines, ScriptedBroker, long_bosch, set_feed, write_price

ORDER = {"status": "success", "data": {"order_ids": ["2601070001"]}}


def upstox_with(settings: Settings, handler: Any) -> UpstoxBroker:
    broker = UpstoxBroker(
        settings.model_copy(update={"upstox_api_base": "http://b", "upstox_order_base": "http://b"}), fill_timeout_s=0.2
    )
    broker._http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return broker


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
        (lambda r: httpx.Response(503, json={"errors": [{"error_code": "UDAPI100500", "message": "down"}]}), False),
    ],
)
async def test_upstox_broker_says_when_an_order_may_have_been_placed(handler: Any, unknown: bool) -> None:
    broker = upstox_with(Settings(_env_file=None), handler)  # type: ignore[call-arg]  # no Redis: a unit test
    with pytest.raises(BrokerError) as info:
        await broker.close(long_bosch(), "guard-close-x", 57500)
    await broker.aclose()
    assert isinstance(info.value, BrokerOutcomeUnknown) is unknown


class UnconfirmedOnce(ScriptedBroker):
    """The first order is placed but its fill is not confirmed in time; it fills at the broker all the same."""

    async def close(self, position: Position, tag: str, decision_price: Paise | None) -> Fill:
        fill = await super().close(position, tag, decision_price)
        if self.orders == 1:
            raise BrokerOutcomeUnknown(f"order {fill.order_id} placed, fill unconfirmed (timeout)")
        return fill


@pytest.mark.integration
async def test_an_unconfirmed_close_stays_closing_and_reconcile_finishes_it_without_a_second_order(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore, logs: LogLines, make_monitor: Any
) -> None:
    await store.open(long_bosch())
    await write_price(redis, settings, "BOSCHLTD", "575.00", clock.now())
    await set_feed(redis, settings, clock, live=True)
    broker = UnconfirmedOnce()
    monitor = make_monitor(broker)  # monitor_stuck_close_s=0.5
    await monitor.sweep_once()
    await monitor.drain()
    position = await store.get("BOSCHLTD")
    assert position is not None
    assert position.state is PositionState.CLOSING
    assert logs.lines("ERROR")[0].startswith("[ERROR] Close of BOSCHLTD unconfirmed: order paper-1 placed")
    await monitor.sweep_once()  # not stuck yet: nothing happens
    await monitor.drain()
    assert broker.orders == 1
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
async def test_the_api_path_keeps_the_claim_too(redis: Redis, clock: ManualClock, store: PositionStore) -> None:
    await store.open(long_bosch())
    broker = UnconfirmedOnce()
    closer = Closer(store, broker, clock)
    request = CloseRequest("BOSCHLTD", CloseReason.EMERGENCY, "api", 57500, PriceSource.LIVE, 0.0)
    with pytest.raises(BrokerOutcomeUnknown):
        await closer.close(request)
    position = await store.get("BOSCHLTD")
    assert position is not None
    assert position.state is PositionState.CLOSING
    assert await broker.find_by_tag(close_tag(position.claim_id)) is not None
