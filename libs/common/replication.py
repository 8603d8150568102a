"""Confirming a close's claim on a replica before its order is sent (Redis `WAIT`).

Redis replicates asynchronously: a claim acknowledged by the master can vanish in a failover if no replica had
it, and a second closer could then claim the same position again and send a second order. So when the master
has replicas, a close sends its order only after at least one replica confirmed the claim within
`CLAIM_REPLICA_TIMEOUT_S`. When none confirms, no order is sent: the claim is released, the position stays
open and guarded, and the close is retried (an SL fired a moment late costs less than a position sold twice).
A master without replicas has nothing to fail over to, so there is nothing to wait for.

The same call refuses a claim that got old before its order left (a closer paused or starved for half of
`MONITOR_STUCK_CLOSE_S`): by then another closer may have found it stuck, found no order by its tag, reopened and
closed the position itself; a late order would be a second one.

`WAIT` counts only the writes of the connection that sends it, and a pooled client may have claimed on another
one; so a small write (`replication:probe`) and the `WAIT` go together on one connection: replication is in
order, so a replica that has the probe has the claim written before it.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from libs.common import keys
from libs.common.broker import BrokerError
from libs.common.clock import Clock
from libs.common.settings import Settings


class ClaimNotConfirmed(BrokerError):
    """The claim is not safe to send an order on, so none was sent; the position is open again (HTTP 503).

    A BrokerError because callers treat it as one: nothing was sold, the position stays open, retry later.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, status_code=503)


class ClaimNotReplicated(ClaimNotConfirmed):
    """No replica confirmed the claim within `CLAIM_REPLICA_TIMEOUT_S`."""

    def __init__(self, symbol: str, timeout_s: float) -> None:
        super().__init__(
            f"claim on {symbol} not confirmed by a Redis replica within {timeout_s:g}s; no order sent, "
            "the position stays open and the close is retried"
        )


class ClaimTooOld(ClaimNotConfirmed):
    """The closer was held up (paused, starved) between its claim and its order for so long that another closer
    may already have found the claim stuck and settled it (after `MONITOR_STUCK_CLOSE_S`)."""

    def __init__(self, symbol: str, age_s: float) -> None:
        super().__init__(
            f"claim on {symbol} was {age_s:.1f}s old when its order was due (this closer was held up); "
            "no order sent, another closer may be settling it"
        )


async def confirmed_on_replica(redis: Redis, timeout_s: float) -> bool:
    """True when at least one replica has every write made before this call, or when the master has no
    replica. Waits at most `timeout_s`. Raises RedisError."""
    role: list[Any] = await redis.execute_command("ROLE")  # type: ignore[no-untyped-call]
    if not role[2]:  # a master alone: there is no replica to lose the write to
        return True
    async with redis.pipeline(transaction=False) as pipe:
        pipe.incr(keys.REPLICATION_PROBE)
        pipe.execute_command("WAIT", 1, max(1, int(timeout_s * 1000)))
        _, acked = await pipe.execute()
    return int(acked) >= 1


class ClaimConfirmation:
    """What `Closer` calls between a claim and its order."""

    def __init__(self, redis: Redis, settings: Settings, clock: Clock) -> None:
        self._redis = redis
        self._timeout_s = settings.claim_replica_timeout_s
        # A claim this old may be reconciled by another closer (MONITOR_STUCK_CLOSE_S): never send on it.
        self._send_within_s = settings.monitor_stuck_close_s / 2
        self._clock = clock

    async def confirm(self, symbol: str, claimed_at: float) -> None:
        """Return once a replica has the claim made on `symbol` at `claimed_at` (monotonic s), or no replica
        exists, and the claim is still young enough to act on.

        Raises ClaimNotReplicated or ClaimTooOld (no order may be sent), RedisError when Redis failed.
        """
        if not await confirmed_on_replica(self._redis, self._timeout_s):
            raise ClaimNotReplicated(symbol, self._timeout_s)
        age_s = self._clock.monotonic() - claimed_at
        if age_s > self._send_within_s:
            raise ClaimTooOld(symbol, age_s)
