"""Turning the guard's events (the `events` stream) into alerts, through the `alerts` consumer group.

Each event is decided once: its message (if the table has one) goes to `alerts:outbox` in the same
transaction that acknowledges the event. An instance that dies holding events leaves them pending; any
instance takes them over after ALERT_CLAIM_IDLE_S.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from loguru import logger
from redis.asyncio import Redis

from libs.common import keys
from libs.common.clock import Clock
from libs.common.events import decode_event
from libs.common.models import MalformedRecord
from libs.common.positions import PositionStore
from libs.common.settings import Settings
from services.alerts.fold import change
from services.alerts.group import Entry, ensure_group, forget_gone, read_new, reclaim
from services.alerts.outbox import Outbox
from services.alerts.table import ALERTS, alert_type, facts, fill, render


class Intake:
    def __init__(self, redis: Redis, settings: Settings, clock: Clock, consumer: str) -> None:
        self._redis = redis
        self._settings = settings
        self._clock = clock
        self._consumer = consumer
        self._outbox = Outbox(redis)
        self._store = PositionStore(redis, clock)

    async def run(self) -> None:
        # "$": a first start does not alert the stream's history; after that the group remembers its place.
        await ensure_group(self._redis, keys.EVENTS_STREAM, "$")
        next_reclaim = 0.0
        while True:
            if self._clock.monotonic() >= next_reclaim:
                for entry in await reclaim(
                    self._redis, keys.EVENTS_STREAM, self._consumer, self._settings.alert_claim_idle_s
                ):
                    await self.handle(entry)
                await forget_gone(self._redis, keys.EVENTS_STREAM, self._settings.alert_claim_idle_s)
                next_reclaim = self._clock.monotonic() + self._settings.alert_claim_idle_s / 2
            for entry in await read_new(self._redis, keys.EVENTS_STREAM, self._consumer, 100, 1000):
                await self.handle(entry)

    async def handle(self, entry: Entry) -> None:
        """Decide one event: queue its alert (or none) and acknowledge it."""
        entry_id, fields = entry
        try:
            event = decode_event(fields)
        except ValueError:
            await self._outbox.post(None, ack=entry_id)  # trimmed or not an event: nothing to say
            return
        kind = alert_type(event)
        rule = ALERTS.get(kind)
        if rule is None:
            await self._outbox.post(None, ack=entry_id)
            return
        values = facts(await self._with_position(event), self._settings)
        now = self._clock.now()
        repeat_s = self._settings.alert_repeat_s
        for condition in rule.clears:
            ended = partial(
                change, active=False, alert_type=kind, facts=values, now=now, repeat_s=repeat_s, silent=True
            )
            await self._outbox.apply(fill(condition, values), ended)
        if not rule.condition:
            await self._outbox.post(render(kind, values, now), ack=entry_id)
            return
        changed = partial(
            change, active=not rule.ends, alert_type=kind, facts=values, now=now, repeat_s=repeat_s, repeats_count=True
        )
        await self._outbox.apply(fill(rule.condition, values), changed, ack=entry_id)

    async def _with_position(self, event: dict[str, Any]) -> dict[str, Any]:
        """Add the position's levels to an event that names a symbol but carries neither position nor record."""
        symbol = event.get("symbol")
        if not symbol or "position" in event or "record" in event:
            return event
        try:
            position = await self._store.get(str(symbol))
        except MalformedRecord:
            logger.debug(f"position {symbol} unreadable; alerting without its levels")
            return event
        return event if position is None else {**event, "position": position.public()}
