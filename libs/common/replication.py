"""Confirming a close's claim on a replica before its order is sent (Redis `WAIT`).

Redis replicates asynchronously: a claim acknowledged by the master can vanish in a failover if no replica had
it, and a second closer could then claim the same position again and send a second order. So when the master
has replicas, a close sends its order only after at least one replica confirmed the claim within
`CLAIM_REPLICA_TIMEOUT_S`. When none confirms, no order is sent: the claim is released, the position stays
open and guarded, and the close is retried (an SL fired a moment late costs less than a position sold twice).
A master without replicas has nothing to fail over to, so there is nothing to wait for.

A claim that got old before its order left (the WAIT included) is refused by `Closer`'s claim fence, which runs
after this confirmation (on the claim holder read after it, in its round trip): one age check, right before the
order.

`WAIT` counts only the writes of the connection that sends it, and a pooled client may have claimed on another
one; so a small write (`replication:probe`) and the `WAIT` go together on one connection: replication is in
order, so a replica that has the probe has the claim written before it.
"""

from __future__ import annotations

from redis.asyncio import Redis

from libs.common import keys
from libs.common.broker import BrokerError
from libs.common.positions import CLAIM_HOLDER_FIELDS, ClaimHolder, claim_holder_of
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


async def confirmed_on_replica(redis: Redis, timeout_s: float, symbol: str) -> tuple[bool, ClaimHolder]:
    """(True when at least one replica has every write made before this call, or when the master has no
    replica; the claim holder of `symbol`'s position read after that). Waits at most `timeout_s`. Raises
    RedisError.

    The holder is read in the same round trip as ROLE (and as INCR/WAIT when there are replicas), after them on
    one connection, which Redis answers in order: so the claim fence on it still runs after the confirmation and
    its age check covers the time WAIT took; a master alone costs one round trip instead of two. A replica that
    attaches after ROLE answered "none" is not waited for, as before: its initial sync copies the master's
    dataset, which holds the claim already (the claim was acknowledged before ROLE was sent), so that replica
    has the claim too."""
    position = keys.position(symbol)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.execute_command("ROLE")
        pipe.hmget(position, CLAIM_HOLDER_FIELDS)
        role, row = await pipe.execute()
    if not role[2]:  # a master alone: there is no replica to lose the write to
        return True, claim_holder_of(row)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.incr(keys.REPLICATION_PROBE)
        pipe.execute_command("WAIT", 1, max(1, int(timeout_s * 1000)))
        pipe.hmget(position, CLAIM_HOLDER_FIELDS)
        _, acked, row = await pipe.execute()
    return int(acked) >= 1, claim_holder_of(row)


class ClaimConfirmation:
    """What `Closer` calls between a claim and its first order."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._timeout_s = settings.claim_replica_timeout_s

    async def confirm(self, symbol: str) -> ClaimHolder:
        """Return once a replica has the claim just made on `symbol`, or no replica exists, with the position's
        claim holder read after that (for the claim fence, one round trip fewer).

        Raises ClaimNotReplicated (no order may be sent), RedisError when Redis failed.
        """
        confirmed, holder = await confirmed_on_replica(self._redis, self._timeout_s, symbol)
        if not confirmed:
            raise ClaimNotReplicated(symbol, self._timeout_s)
        return holder
