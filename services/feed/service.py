"""The feed service: one WebSocket connection plus its helpers, each a named, supervised task.

Tasks: `feed:connection` (the WebSocket and its reconnect loop, run only while this process holds the feed
lease: services/feed/leadership.py), `feed:writer` (ticks to Redis),
`feed:vouch` (keeps quiet symbols fresh while the link is healthy, reports silent ones, trims `prices:index`),
`feed:subscriptions` (subscribe and unsubscribe requests, and the periodic re-read of `feed:subscriptions`),
`feed:rest-poll` (LTP over REST for open positions while the WebSocket is down, Layer 2b), `feed:status` (writes
`feed:status` on a timer) and `feed:heartbeat`, all run by `supervise` (libs/common/service.py): a task that fails
is logged with its error and restarted with backoff; none dies silently. Price and status writes are fenced by the
feed lease, so a standby's (or a deposed leader's) writes are refused inside Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from loguru import logger
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.common import keys
from libs.common.clock import Clock, SystemClock
from libs.common.dns import HostResolver
from libs.common.feed_lease import FeedLease, FencedOut
from libs.common.instruments import InstrumentIndex, guard_instruments
from libs.common.metrics import start_exporter
from libs.common.models import FeedState
from libs.common.positions import PositionStore
from libs.common.price_cache import PriceCache
from libs.common.redis_client import create_redis
from libs.common.service import supervise
from libs.common.settings import Settings
from services.feed.leadership import FeedLeadership
from services.feed.metrics import StatusCollector
from services.feed.rest_poll import RestPoller
from services.feed.silence import Review
from services.feed.status import StatusBoard
from services.feed.subscriptions import Subscriptions, watchlist
from services.feed.websocket import FeedConnection


class Feed:
    """The feed, runnable in-process: `await Feed(settings, redis).run()` until cancelled."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        clock: Clock | None = None,
        *,
        instruments: InstrumentIndex | None = None,
        resolver: HostResolver | None = None,
    ) -> None:
        self._settings = settings
        self.redis = redis
        self.clock = clock or SystemClock()
        index = instruments or guard_instruments(settings, self.clock)
        self.subscriptions = Subscriptions(watchlist(settings, index), index)
        # Only the holder of the feed lease connects and writes (its writes are fenced by the lease's token).
        self.lease = FeedLease(redis, settings, self.clock)
        self.leadership = FeedLeadership(self.lease, settings, self.clock)
        self.status = StatusBoard(redis, self.clock, fence=self.lease.fence_args)
        self.cache = PriceCache(redis, settings.price_cache_ttl_s, fence=self.lease.fence_args)
        self.events = PositionStore(redis, self.clock)  # the events stream (instrument silence is reported there)
        self.resolver = resolver or HostResolver.from_settings(settings, self.clock)
        self.connection = FeedConnection(
            settings, self.clock, redis, self.cache, self.status, self.subscriptions, self.resolver
        )
        self.rest_poller = RestPoller(
            settings, self.clock, redis, self.cache, self.status, self.connection, self.resolver,
            leading=lambda: self.leadership.leading,
        )  # fmt: skip
        self.restarts: dict[str, int] = {}

    async def run(self) -> None:
        """Run every task until cancelled; on the way out, close the connection and record `closed`."""
        loops: dict[str, Callable[[], Awaitable[None]]] = {
            "connection": lambda: self.leadership.run(self._lead),
            "writer": self.connection.writer.run,
            "vouch": self._vouch_forever,
            "rest-poll": self.rest_poller.run,
            "subscriptions": self._follow_requests,
            "status": self._status_forever,
        }
        try:
            await supervise(
                "feed", loops, redis=self.redis, settings=self._settings, clock=self.clock,
                beats_for_service=lambda: self.leadership.leading,
            )  # fmt: skip
        finally:
            with contextlib.suppress(RedisError):
                await self.status.transition(FeedState.CLOSED, "stopped")  # fenced: only a leader records it
                await self.lease.release()  # a standby takes over at once instead of after the lease

    async def _lead(self) -> None:
        """Hold the Upstox connection as the leader. Ticks kept back from an earlier leadership are dropped:
        another leader may have written newer prices since."""
        self.connection.writer.discard()
        self.cache.discard_unwritten()
        await self.connection.run()

    async def _vouch_forever(self) -> None:
        """While the link is healthy, mark the subscribed symbols that are plausibly quiet current (and refresh their
        expiry); date back and report the ones gone silent while their segment trades; trim expired symbols from
        `prices:index`."""
        last_as_of = 0.0
        while True:
            await self.clock.sleep(self._settings.vouch_interval_s)
            try:
                await self.cache.trim_index(self.clock.now())
                as_of = self.connection.vouch_as_of()
                link = self.connection.link
                if as_of is None or link.connected_at is None:
                    continue
                review = self.connection.instruments.review(
                    self.subscriptions.wanted, self.clock.now(), link.connected_at, link.segments
                )
                await self._report_silence(review)
                if as_of > last_as_of:
                    await self.cache.vouch(review.vouch, as_of)
                    last_as_of = as_of
            except FencedOut:
                continue  # not the leader (or no longer): feed:leadership says so
            except RedisError as exc:
                logger.warning(f"Cannot vouch for prices in Redis: {type(exc).__name__}")

    async def _report_silence(self, review: Review) -> None:
        self.status.silent_symbols = len(self.connection.instruments.silent)
        if review.silent:
            await self.cache.mark_silent(review.silent)
        for symbol, reason in review.silent.items():
            logger.warning(f"{symbol}: {reason}; its price now ages from its last tick")
            await self.events.publish_event("instrument_silent", symbol, reason=reason)
        for symbol in review.back:
            logger.info(f"{symbol} is ticking again")
            await self.events.publish_event("instrument_ticking", symbol)

    async def _status_forever(self) -> None:
        while True:
            await self.clock.sleep(self._settings.heartbeat_interval_s)
            self.status.out_of_order_ticks = self.cache.out_of_order
            await self.status.flush()

    async def _follow_requests(self) -> None:
        """Apply subscription requests as they come, and re-read `feed:subscriptions` on a timer. A Redis outage
        ends it: `supervise` logs it and restarts it with backoff (re-subscribing and re-reading at once)."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(keys.SUBSCRIPTION_REQUESTS_CHANNEL)
            refresh_s = self._settings.feed_subscriptions_refresh_s
            next_refresh = self.clock.monotonic()  # re-read at once: requests sent while we were away are lost
            while True:
                if self.clock.monotonic() >= next_refresh:
                    change = await self.subscriptions.refresh(self.redis)
                    if change:
                        await self.connection.apply(change)
                    next_refresh = self.clock.monotonic() + refresh_s
                wait_s = max(0.01, min(1.0, next_refresh - self.clock.monotonic()))
                message = await pubsub.get_message(timeout=wait_s)
                if message is None or message.get("type") != "message":
                    continue
                data = message["data"]
                text = data.decode() if isinstance(data, bytes) else str(data)
                change = self.subscriptions.apply_request(text)
                if change:
                    await self.connection.apply(change)
        finally:
            # Shielded: a second cancel (see tasks.cancel_and_wait) must not leave its connection open.
            with contextlib.suppress(RedisError, OSError, asyncio.CancelledError):
                await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call]


async def main(settings: Settings) -> None:
    """`python -m services.feed`: the feed against Redis until SIGTERM/SIGINT."""
    redis = create_redis(settings)
    try:
        feed = Feed(settings, redis)
        REGISTRY.register(StatusCollector(feed.status))
        start_exporter(settings.feed_metrics_port, settings.metrics_host)
        await feed.run()
    finally:
        await redis.aclose()
