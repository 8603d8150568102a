"""Run the Upstox connection only while this feed process holds the feed lease (libs/common/feed_lease.py).

A standby tries to acquire the lease every `FEED_LEASE_S`/5 (at most every second), so it takes over within
`FEED_LEASE_S` of the leader's last renewal. The leader renews every `FEED_LEASE_S`/3, and as often as a
standby polls while a renewal fails (a Redis failover), so a failover shorter than the lease keeps the leader.
It steps down, closing its connection, when a renewal finds another holder, or when it has not renewed for a
whole lease (a pause, or Redis out of reach: a standby may lead by now). Its writes are fenced inside Redis,
so the moments between waking up and noticing write nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from loguru import logger
from redis.exceptions import RedisError

from libs.common.clock import Clock
from libs.common.feed_lease import FeedLease
from libs.common.service import cancel_and_wait
from libs.common.settings import Settings


class FeedLeadership:
    """Leads (runs `lead`) while the lease is ours; stands by otherwise. `run()` returns only when cancelled."""

    def __init__(self, lease: FeedLease, settings: Settings, clock: Clock) -> None:
        self.lease = lease
        self._clock = clock
        self._lease_s = settings.feed_lease_s
        self._renew_every_s = settings.feed_lease_s / 3
        self._poll_s = min(1.0, settings.feed_lease_s / 5)

    @property
    def leading(self) -> bool:
        return bool(self.lease.token)

    async def run(self, lead: Callable[[], Awaitable[None]]) -> None:
        standby_logged = False
        while True:
            try:
                acquired = await self.lease.acquire()
            except RedisError:
                acquired = False  # the connection's own loops report Redis outages
            if acquired:
                logger.success(
                    f"Feed leader: instance {self.lease.instance} holds the feed lease "
                    f"(fencing token {self.lease.token.partition(':')[0]}); connecting to the market-data feed"
                )
                await self._lead(lead)
                standby_logged = False
            elif not standby_logged:
                logger.info(
                    f"Standby: another feed instance holds the feed lease; taking over if it is not renewed "
                    f"for {self._lease_s:g} s"
                )
                standby_logged = True
            await self._clock.sleep(self._poll_s)

    async def _lead(self, lead: Callable[[], Awaitable[None]]) -> None:
        """Run `lead` and renew the lease until it is lost; then close the connection and return."""
        task = asyncio.create_task(_run(lead), name="feed:connection:leader")
        renewed_at = self._clock.monotonic()
        wait_s = self._renew_every_s
        try:
            while True:
                await asyncio.wait({task}, timeout=wait_s)
                if task.done():
                    task.result()  # the connection task failed: raise, the feed's supervisor restarts us
                silent_s = self._clock.monotonic() - renewed_at
                if silent_s > self._lease_s:
                    reason = f"lease not renewed for {silent_s:.1f} s (paused or cut off from Redis)"
                    break
                started = self._clock.monotonic()
                try:
                    if not await self.lease.renew():
                        reason = "another feed instance holds the lease now"
                        break
                except RedisError:
                    wait_s = self._poll_s  # retried soon (a Redis failover takes seconds); a whole lease without
                    continue  # a renewal steps down
                renewed_at, wait_s = started, self._renew_every_s
        except BaseException:
            await cancel_and_wait([task])
            raise
        self.lease.step_down()  # fenced from here on, before the connection is even closed
        logger.warning(f"Lost the feed lease: {reason}; closing the Upstox connection and standing by")
        await cancel_and_wait([task])


async def _run(lead: Callable[[], Awaitable[None]]) -> None:
    await lead()
