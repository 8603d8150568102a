"""Deciding an alert in Redis: condition state, the message put in `alerts:outbox` and the event's ack, at once.

Every decision is one MULTI/EXEC (with WATCH on the condition hash), so a crash leaves either nothing done
(the event is still pending and is decided again) or everything done; two alerts instances deciding the same
condition cannot both send it (the second one's WATCH fails and it re-reads the new state).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from libs.common import keys
from services.alerts.fold import ConditionState
from services.alerts.table import Alert

OUTBOX_MAXLEN = 10_000

Change = Callable[[ConditionState], tuple[ConditionState, Alert | None]]


class Outbox:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def post(self, alert: Alert | None, ack: str | None = None) -> None:
        """Queue `alert` (if any) for sending and acknowledge event `ack` (if any), atomically."""
        async with self._redis.pipeline(transaction=True) as pipe:
            self._queue(pipe, alert, ack)
            await pipe.execute()

    async def apply(self, condition: str, change: Change, ack: str | None = None) -> Alert | None:
        """Apply `change` to the stored state of `condition`; queue its message and ack `ack`, atomically."""
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(keys.ALERT_CONDITIONS)
                    stored: Any = await pipe.hget(keys.ALERT_CONDITIONS, condition)
                    state = ConditionState.from_json(stored)
                    new, alert = change(state)
                    if new == state and ack is None:
                        await pipe.unwatch()  # type: ignore[no-untyped-call]
                        return None
                    pipe.multi()  # type: ignore[no-untyped-call]
                    if new != state:
                        pipe.hset(keys.ALERT_CONDITIONS, condition, new.to_json())
                    self._queue(pipe, alert, ack)
                    await pipe.execute()
                    return alert
                except WatchError:
                    continue

    async def conditions(self) -> dict[str, ConditionState]:
        rows: dict[str, str] = await self._redis.hgetall(keys.ALERT_CONDITIONS)  # type: ignore[assignment]
        return {str(k): ConditionState.from_json(v) for k, v in rows.items()}

    @staticmethod
    def _queue(pipe: Pipeline, alert: Alert | None, ack: str | None) -> None:
        if alert is not None:
            pipe.xadd(keys.ALERTS_OUTBOX, {"alert": alert.to_json()}, maxlen=OUTBOX_MAXLEN, approximate=True)
        if ack is not None:
            pipe.xack(keys.EVENTS_STREAM, keys.ALERTS_GROUP, ack)
