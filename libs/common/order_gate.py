"""Whether the broker refuses our order calls (403 UDAPI1154 static IP, UDAPI1156 algo name), shared in Redis.

A refused order call is a configuration error, not a network blip: it is logged once as `[ERROR]` with what
to fix and recorded once as an `orders_blocked` event (`orders_unblocked` when it ends), shown in the api's
`/status` (`orders.blocked`, `orders.reason`), and the blocked close is retried every `ORDER_BLOCKED_RETRY_S`
so a fixed registration is picked up without a restart.
"""

from __future__ import annotations

from typing import cast

from loguru import logger
from redis.asyncio import Redis

from libs.common import keys
from libs.common.clock import Clock
from libs.common.events import add_event, encode_event

FIX = (
    "register this machine's public IP as the static IP of your Upstox app (developer console, "
    "or PUT /v2/user/ip; a change invalidates the access token) and, if your app has one, set UPSTOX_ALGO_NAME"
)


class OrderGate:
    """Records and clears the blocked state (`orders:blocked`)."""

    def __init__(self, redis: Redis, clock: Clock) -> None:
        self._redis = redis
        self._clock = clock

    async def blocked(self, reason: str) -> None:
        """Order calls are refused: record why; the first process to notice logs the one `[ERROR]` line."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(keys.ORDERS_BLOCKED, "since", repr(self._clock.now()))
            pipe.hset(keys.ORDERS_BLOCKED, "reason", reason[:500])
            first, _ = await pipe.execute()
        if first:
            logger.error(f"Order calls are blocked by the broker: {reason}. To fix: {FIX}")
            await add_event(self._redis, encode_event("orders_blocked", self._clock.now(), reason=reason[:500]))

    async def accepted(self) -> None:
        """An order call went through: the block (if any) is over."""
        if await self._redis.delete(keys.ORDERS_BLOCKED):
            logger.success("Order calls are accepted again (static IP registration fixed)")
            await add_event(self._redis, encode_event("orders_unblocked", self._clock.now()))

    async def state(self) -> dict[str, str]:
        """`{"reason", "since"}` while blocked, else empty."""
        return cast(dict[str, str], await self._redis.hgetall(keys.ORDERS_BLOCKED))
