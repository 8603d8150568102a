"""The feed's `feed:status` hash and its transition notices.

Counters change on the hot path, so they live in plain attributes here; `flush()` turns them into a
`FeedStatus` and writes the hash (on every transition and on a timer). Transitions are also published
on `feed:status:changes` as small JSON and recorded in the `events` stream (for the alerts service and
`/status`), after the hash is written (the hash is the truth).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from loguru import logger
from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.common import keys
from libs.common.clock import Clock
from libs.common.events import add_event, encode_event
from libs.common.feed_lease import FENCE_CHECK, FencedOut, fence_checked
from libs.common.models import FeedState, FeedStatus, dumps_compact

# KEYS: feed:status. ARGV: field/value pairs, then the fence (only the feed leader writes the status).
_FLUSH = (
    FENCE_CHECK
    + """
for i = 1, #ARGV - 2, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""
)


class StatusBoard:
    """Mutable feed status, written to Redis by `flush` / `transition`."""

    def __init__(self, redis: Redis, clock: Clock, *, fence: Callable[[], list[str]] | None = None) -> None:
        self._redis = redis
        self._clock = clock
        self._fence = fence or (lambda: ["", ""])
        self._flush = redis.register_script(_FLUSH)
        self.state = FeedState.CLOSED
        self.subscribed_symbols = 0
        self.mode = ""  # FEED_MODE, the mode of every symbol not in `other_modes`
        self.other_modes: dict[str, str] = {}  # SYMBOL -> mode (options: option_greeks)
        self.reconnect_attempts = 0
        self.network_errors = 0
        self.corrupt_frames = 0
        self.absurd_prices = 0
        self.out_of_order_ticks = 0
        self.superseded_ticks = 0
        self.server_pings = 0
        self.last_server_ping_at: float | None = None
        self.silent_symbols = 0
        self.rest_polling = False
        self.last_message_at: float | None = None
        self.last_data_at: float | None = None
        self.market_open: bool | None = None
        self.token_ok: bool | None = None
        self.dns_resolver = ""
        self.resolved_address = ""
        self.last_error = ""
        self.outage_started_at: float | None = None
        self.next_retry_at: float | None = None
        self._redis_warned_at = -1e9

    @property
    def connected(self) -> bool:
        return self.state is FeedState.LIVE

    def snapshot(self) -> FeedStatus:
        """The current status as the shared model."""
        return FeedStatus(
            state=self.state,
            connected=self.connected,
            subscribed_symbols=self.subscribed_symbols,
            mode=self.mode,
            other_modes=dumps_compact(self.other_modes),
            reconnect_attempts=self.reconnect_attempts,
            network_errors=self.network_errors,
            corrupt_frames=self.corrupt_frames,
            absurd_prices=self.absurd_prices,
            out_of_order_ticks=self.out_of_order_ticks,
            superseded_ticks=self.superseded_ticks,
            server_pings=self.server_pings,
            last_server_ping_at=self.last_server_ping_at,
            silent_symbols=self.silent_symbols,
            rest_polling=self.rest_polling,
            last_message_at=self.last_message_at,
            last_data_at=self.last_data_at,
            market_open=self.market_open,
            token_ok=self.token_ok,
            dns_resolver=self.dns_resolver,
            resolved_address=self.resolved_address,
            last_error=self.last_error,
            outage_started_at=self.outage_started_at,
            next_retry_at=self.next_retry_at,
            updated_at=self._clock.now(),
        )

    async def flush(self) -> bool:
        """Write the hash; a Redis outage is logged (at most every 10 s) and reported as False.

        A standby (no feed lease) writes nothing and gets False without a warning.
        """
        fields = [item for pair in self.snapshot().to_redis().items() for item in pair]
        try:
            fence_checked(await self._flush(keys=[keys.FEED_STATUS], args=[*fields, *self._fence()]))
        except FencedOut:
            return False
        except RedisError as exc:
            self._warn_redis(exc)
            return False
        return True

    async def transition(self, state: FeedState, reason: str = "") -> None:
        """Enter `state`: write the hash, then publish `{"state", "connected", "at", "reason"}` and record it."""
        previous = self.state
        self.state = state
        logger.debug(f"feed state {previous} -> {state}{f' ({reason})' if reason else ''}")
        if not await self.flush():
            return
        at = self._clock.now()
        change: dict[str, Any] = {"state": str(state), "previous": str(previous), "connected": self.connected}
        if reason:
            change["reason"] = reason
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.publish(keys.FEED_STATUS_CHANNEL, dumps_compact({**change, "at": at}))
                add_event(pipe, encode_event("feed_state", at, **change))
                await pipe.execute()
        except RedisError as exc:
            self._warn_redis(exc)

    def _warn_redis(self, exc: RedisError) -> None:
        now = self._clock.monotonic()
        if now - self._redis_warned_at >= 10:
            self._redis_warned_at = now
            logger.warning(f"Cannot write feed status to Redis: {type(exc).__name__}: {exc}")
