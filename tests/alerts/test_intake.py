"""Events -> outbox in-process against a real Redis: every event acknowledged once decided, conditions raised and
ended by their events, unknown or broken entries acknowledged without a message."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from libs.common import keys
from libs.common.clock import SystemClock
from libs.common.events import add_event, encode_event
from libs.common.settings import Settings
from services.alerts.group import ensure_group, read_new
from services.alerts.intake import Intake
from services.alerts.table import Alert

pytestmark = pytest.mark.integration


async def decide_all(redis: Redis, settings: Settings) -> list[Alert]:
    intake = Intake(redis, settings, SystemClock(), "test-consumer")
    for entry in await read_new(redis, keys.EVENTS_STREAM, "test-consumer", 100, 10):
        await intake.handle(entry)
    rows: Any = await redis.xrange(keys.ALERTS_OUTBOX)
    return [Alert.from_json(fields["alert"]) for _, fields in rows]


async def test_events_raise_and_end_conditions_and_every_entry_is_acknowledged(
    redis: Redis, settings: Settings
) -> None:
    await ensure_group(redis, keys.EVENTS_STREAM, "$")
    for kind in ("unmonitored", "unmonitored", "opened", "feed_state"):  # the repeat and the others: no message
        await add_event(redis, encode_event(kind, 1.0, "BOSCHLTD"))
    await redis.xadd(keys.EVENTS_STREAM, {"event": "not json"})
    await redis.xadd(keys.EVENTS_STREAM, {"other": "field"})
    record = {"closed_by": "api", "reason": "emergency", "exit_price": 720.0, "pnl": -150.0, "quantity": 10}
    await add_event(redis, encode_event("closed", 2.0, "BOSCHLTD", record=record))
    await add_event(redis, encode_event("monitored_again", 3.0, "BOSCHLTD", price_source="live"))  # already ended

    alerts = await decide_all(redis, settings.model_copy(update={"alert_repeat_s": 60.0}))

    assert [a.title for a in alerts] == [
        "Can't monitor BOSCHLTD - no fresh prices",
        "BOSCHLTD closed (emergency)",
    ]  # the close ended "cannot monitor" without a "monitoring again" of its own
    pending: Any = await redis.xpending(keys.EVENTS_STREAM, keys.ALERTS_GROUP)
    assert pending["pending"] == 0
    state = await redis.hget(keys.ALERT_CONDITIONS, "unmonitored:BOSCHLTD")
    assert state is not None and '"active":false' in state and '"pending":0' in state
