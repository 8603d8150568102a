"""A new access token lifts the close backoff: a stop-loss held back after a refused order fires at once."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from libs.common.clock import ManualClock
from libs.common.models import PositionState
from libs.common.positions import PositionStore
from libs.common.settings import Settings
from tests.monitor.conftest import LogLines, ScriptedBroker, compressed, long_bosch, set_feed, write_price

pytestmark = pytest.mark.integration


async def test_a_new_token_retries_a_close_held_by_its_backoff(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore, logs: LogLines, make_monitor: Any
) -> None:
    await store.open(long_bosch())
    await write_price(redis, settings, "BOSCHLTD", "690.00", clock.now())
    await set_feed(redis, settings, clock, live=True)
    broker = ScriptedBroker(failures=1)  # the order refused once, as with an expired token
    monitor = make_monitor(broker, settings_=compressed(settings, close_retry_base_s=60.0, close_retry_max_s=60.0))
    await monitor.sweep_once()
    await monitor.drain()
    position = await store.get("BOSCHLTD")
    assert position is not None and position.state is PositionState.OPEN and position.next_attempt_at is not None

    clock.advance(1.0)
    await monitor.sweep_once()  # a minute of backoff left: held back
    await monitor.drain()
    assert broker.orders == 1

    monitor.on_new_token()
    await monitor.sweep_once()
    await monitor.drain()
    assert broker.orders == 2
    closed = await store.get("BOSCHLTD")
    assert closed is not None and closed.state is PositionState.CLOSED
    assert logs.count("New access token: retrying the close of BOSCHLTD now") == 1
