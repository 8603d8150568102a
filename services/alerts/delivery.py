"""Sending the messages of `alerts:outbox` to every `ALERT_URLS` target, each exactly once when possible.

A message is acknowledged only when every target has it; which targets already have it (by a digest of the
URL) is kept in `alerts:sent:ID`, so a retry or a restart sends it only where it is missing. A failing target backs off
(exponential with jitter, up to ALERT_RETRY_MAX_S) and holds its later messages back, so each target gets
them in order and a dead one does not delay the others. Messages of a crashed instance are reclaimed after
ALERT_CLAIM_IDLE_S; the ones this instance is working on are touched so nobody reclaims them meanwhile.
With no targets, a message goes to the log only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loguru import logger
from redis.asyncio import Redis

from libs.common import keys
from libs.common.backoff import Backoff
from libs.common.clock import Clock, ist_iso
from libs.common.logging import tagged
from libs.common.notify import Kind, Target, send
from libs.common.settings import Settings
from services.alerts.group import Entry, ensure_group, forget_gone, read_new, read_own, reclaim, touch
from services.alerts.metrics import SENDS
from services.alerts.table import Alert, Severity

SENT_TTL_S = 7 * 86400
_KIND: dict[Severity, Kind] = {
    Severity.CRITICAL: "failure",
    Severity.WARNING: "warning",
    Severity.INFO: "info",
    Severity.RECOVERED: "success",
}


@dataclass
class _Message:
    alert: Alert | None  # None: unreadable (trimmed); acknowledged without sending
    sent: set[str] = field(default_factory=set)  # keys of the targets that have it


@dataclass
class _Retries:
    """One target's run of failed sends, and when the next try is due."""

    failures: int = 0
    next_at: float = 0.0


class Delivery:
    def __init__(self, redis: Redis, settings: Settings, clock: Clock, consumer: str, targets: list[Target]) -> None:
        self._redis = redis
        self._settings = settings
        self._clock = clock
        self._consumer = consumer
        self._targets = targets
        self._backoff = {t.key: _Retries() for t in targets}
        self._retry = Backoff.around(settings.alert_retry_base_s, settings.alert_retry_max_s, 0.2)
        self._messages: dict[str, _Message] = {}

    async def run(self) -> None:
        await ensure_group(self._redis, keys.ALERTS_OUTBOX, "0")
        await self._take(await read_own(self._redis, keys.ALERTS_OUTBOX, self._consumer))
        next_reclaim = 0.0
        while True:
            if self._clock.monotonic() >= next_reclaim:
                idle_s = self._settings.alert_claim_idle_s
                await touch(self._redis, keys.ALERTS_OUTBOX, self._consumer, list(self._messages))
                await self._take(await reclaim(self._redis, keys.ALERTS_OUTBOX, self._consumer, idle_s))
                await forget_gone(self._redis, keys.ALERTS_OUTBOX, idle_s)
                next_reclaim = self._clock.monotonic() + idle_s / 3
            await self.deliver()
            await self._take(await read_new(self._redis, keys.ALERTS_OUTBOX, self._consumer, 50, self._wait_ms()))

    async def _take(self, entries: list[Entry]) -> None:
        for entry_id, fields in entries:
            if entry_id in self._messages:
                continue
            try:
                alert: Alert | None = Alert.from_json(fields["alert"])
            except (KeyError, ValueError, TypeError):
                alert = None
            sent = {str(k) for k in await self._redis.smembers(keys.alert_sent(entry_id))}
            self._messages[entry_id] = _Message(alert, sent)
            if alert is not None and not sent:
                _log(alert)
        self._messages = dict(sorted(self._messages.items(), key=lambda item: _order(item[0])))

    async def deliver(self) -> None:
        """Send every message to every target that is not backing off, oldest first; ack the complete ones."""
        for target in self._targets:
            backoff = self._backoff[target.key]
            if self._clock.monotonic() < backoff.next_at:
                continue
            for entry_id, message in self._messages.items():
                if message.alert is None or target.key in message.sent:
                    continue
                if not await self._send(entry_id, message.alert, target, backoff):
                    break  # later messages wait: each target gets them in order
                message.sent.add(target.key)
        for entry_id, message in list(self._messages.items()):
            if message.alert is None or all(t.key in message.sent for t in self._targets):
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.xack(keys.ALERTS_OUTBOX, keys.ALERTS_GROUP, entry_id)
                    pipe.delete(keys.alert_sent(entry_id))
                    await pipe.execute()
                del self._messages[entry_id]

    async def _send(self, entry_id: str, alert: Alert, target: Target, backoff: _Retries) -> bool:
        outcome = await send(target, alert.heading(), alert.text(), _KIND[alert.severity])
        SENDS.labels(result="sent" if outcome.sent else "failed").inc()
        note = f"alerts.undelivered.{target.label}"  # shown by GET /api/v1/monitoring/status
        if outcome.sent:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.sadd(keys.alert_sent(entry_id), target.key)
                pipe.expire(keys.alert_sent(entry_id), SENT_TTL_S)
                if backoff.failures:
                    pipe.hdel(keys.SERVICES_STATUS, note)
                await pipe.execute()
            if backoff.failures:
                logger.success(f"Alerts reach {target.label} again (after {backoff.failures} failed attempts)")
            backoff.failures, backoff.next_at = 0, 0.0
            return True
        backoff.failures += 1
        delay_s = self._retry.compute(backoff.failures)
        backoff.next_at = self._clock.monotonic() + delay_s
        waiting = sum(target.key not in m.sent for m in self._messages.values())
        at = ist_iso(self._clock.now())
        detail = f"{outcome.error} (attempt {backoff.failures} at {at}; {waiting} message(s) waiting)"
        await self._redis.hset(keys.SERVICES_STATUS, note, detail[:500])
        logger.warning(
            f"Alert not delivered to {target.label} (attempt {backoff.failures}): {outcome.error}; "
            f"retrying in {delay_s:.1f} s"
        )
        return False

    def _wait_ms(self) -> int:
        """How long to wait for new messages: until the next retry is due, at most 1 s."""
        waiting = [b.next_at for b in self._backoff.values() if b.next_at] if self._messages else []
        due_s = min(waiting, default=self._clock.monotonic() + 1.0) - self._clock.monotonic()
        return max(10, min(1000, int(due_s * 1000)))


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _log(alert: Alert) -> None:
    line = f"{alert.heading()}: {alert.body}" + (f" What to do: {alert.action}" if alert.action else "")
    log = tagged("ALERT")
    if alert.severity is Severity.CRITICAL:
        log.error(line)
    elif alert.severity is Severity.WARNING:
        log.warning(line)
    else:
        log.info(line)
