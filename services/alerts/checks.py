"""Conditions the alerts service derives from Redis state on a timer: the feed down for a while, the access
token rejected, open positions on stale prices, a service whose heartbeat is lost. Also the flush of folded
messages.

Every instance evaluates them; the condition state in Redis decides atomically, so a change is sent once.
"""

from __future__ import annotations

from functools import partial
from typing import Any, cast

from loguru import logger
from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.common import keys
from libs.common.clock import Clock, to_ist
from libs.common.freshness import FreshnessPolicy
from libs.common.heartbeat import heartbeat_age_s
from libs.common.models import FeedStatus, MalformedRecord, Position, PositionState, PriceEntry
from libs.common.money import fmt_inr
from libs.common.positions import PositionStore
from libs.common.price_cache import PriceCache
from libs.common.settings import Settings
from services.alerts.fold import change, flush, human_duration
from services.alerts.outbox import Outbox
from services.alerts.table import commands


def watched_services(settings: Settings) -> tuple[str, ...]:
    """The services that must be running (the simulator only in simulator mode)."""
    return ("sim", "feed", "monitor", "api") if settings.simulator_mode else ("feed", "monitor", "api")


class Liveness:
    """Which watched services beat; a service not seen yet is given a start-up grace of 3 heartbeat TTLs."""

    def __init__(self, redis: Redis, settings: Settings, clock: Clock) -> None:
        self._redis = redis
        self._settings = settings
        self._clock = clock
        self._started = clock.now()
        self._seen: set[str] = set()

    async def ages(self) -> dict[str, float | None]:
        """Seconds since each watched service beat (None: never, or expired)."""
        names = watched_services(self._settings)
        return {name: await heartbeat_age_s(self._redis, name, self._clock) for name in names}

    async def dead(self) -> dict[str, float | None]:
        """The watched services without a fresh heartbeat, with their heartbeat age, after the grace."""
        ttl_s = self._settings.heartbeat_ttl_s
        out: dict[str, float | None] = {}
        for name, age in (await self.ages()).items():
            if age is not None and age < ttl_s:
                self._seen.add(name)
            elif not self.starting(name):
                out[name] = age
        return out

    def starting(self, name: str) -> bool:
        """True while `name` has not beaten yet within the start-up grace (it may still be starting)."""
        return name not in self._seen and self._clock.now() - self._started < 3 * self._settings.heartbeat_ttl_s


class Checks:
    def __init__(self, redis: Redis, settings: Settings, clock: Clock, liveness: Liveness) -> None:
        self._redis = redis
        self._settings = settings
        self._clock = clock
        self._liveness = liveness
        self._outbox = Outbox(redis)
        self._store = PositionStore(redis, clock)
        self._cache = PriceCache(redis, settings.price_cache_ttl_s)
        self._policy = FreshnessPolicy.from_settings(settings)
        self._feed_down_since: float | None = None
        self._now: dict[str, dict[str, Any]] = {}  # facts of the active conditions as evaluated this round
        self._warned_at = -1e9

    async def run(self) -> None:
        while True:
            try:
                await self.evaluate()
            except RedisError as exc:  # Redis down: nothing to read; the healthcheck pings /fail
                if self._clock.monotonic() - self._warned_at >= 10:
                    self._warned_at = self._clock.monotonic()
                    logger.warning(f"Cannot evaluate alert conditions: Redis {type(exc).__name__}")
            await self._clock.sleep(self._settings.alert_check_interval_s)

    async def evaluate(self) -> None:
        now = self._clock.now()
        self._now.clear()
        dead = await self._liveness.dead()
        await self._feed(now, feed_alive="feed" not in dead)
        await self._stale(now)
        for name in watched_services(self._settings):
            await self._heartbeat(name, now, dead)
        for condition, state in (await self._outbox.conditions()).items():
            if state.pending:
                folded = partial(flush, now=now, repeat_s=self._settings.alert_repeat_s, facts=self._now.get(condition))
                await self._outbox.apply(condition, folded)

    async def _set(
        self, condition: str, active: bool, alert_type: str, facts: dict[str, Any], silent: bool = False
    ) -> None:
        facts = {**commands(self._settings), **facts}
        if active:
            self._now[condition] = facts
        changed = partial(
            change,
            active=active,
            alert_type=alert_type,
            facts=facts,
            now=self._clock.now(),
            repeat_s=self._settings.alert_repeat_s,
            silent=silent,
        )
        await self._outbox.apply(condition, changed)

    async def _feed(self, now: float, feed_alive: bool) -> None:
        if self._liveness.starting("feed"):
            return
        try:
            status = FeedStatus.from_redis(cast(dict[str, str], await self._redis.hgetall(keys.FEED_STATUS)))
        except MalformedRecord:
            return
        if feed_alive:
            await self._token(status)
        if feed_alive and status.connected:
            self._feed_down_since = None
            await self._set("feed_down", False, "feed_recovered", {})
            return
        if status.outage_started_at is not None:  # written by the feed, even if it died since
            self._feed_down_since = status.outage_started_at
        elif self._feed_down_since is None:
            self._feed_down_since = now
        down_s = now - self._feed_down_since
        if down_s < self._settings.alert_feed_down_s:
            return
        facts = {
            "since_epoch": self._feed_down_since,
            "since": f"{to_ist(self._feed_down_since):%H:%M:%S} IST",
            "down_for": human_duration(down_s),
            "attempts": status.reconnect_attempts,
            "error": (status.last_error or "none") if feed_alive else "the feed process is not running",
            "open_positions": await self._redis.scard(keys.OPEN_POSITIONS),
        }
        await self._set("feed_down", True, "feed_down", facts)

    async def _token(self, status: FeedStatus) -> None:
        if status.token_ok is None:  # not tried yet
            return
        if status.token_ok:
            await self._set("feed_token", False, "feed_token_ok", {})
        else:
            await self._set("feed_token", True, "feed_token_rejected", {"error": status.last_error or "HTTP 401"})

    async def _stale(self, now: float) -> None:
        positions = [
            p for p in await self._store.list_open() if isinstance(p, Position) and p.state is PositionState.OPEN
        ]
        prices = await self._cache.read([p.symbol for p in positions])
        stale: list[str] = []
        expired = 0
        for position in positions:
            entry = prices[position.symbol]
            layer = self._policy.layer(entry.age_s(now)) if isinstance(entry, PriceEntry) else "expired"
            if layer == "expired":
                expired += 1
                continue
            if layer == "fresh" or not isinstance(entry, PriceEntry):
                continue
            age_s = entry.age_s(now)
            levels = ", ".join(
                f"{name} {fmt_inr(level)}"
                for name, level in (("SL", position.stop_loss), ("TP", position.take_profit))
                if level is not None
            )
            stale.append(f"{position.symbol} {fmt_inr(entry.ltp)} ({age_s:.0f} s old; {levels or 'no SL/TP'})")
        if not stale:
            # Expired prices are a worse condition with alerts of their own (cannot monitor), and closed positions
            # had their close alert: "fresh again" only when open positions really are.
            silent = expired > 0 or not positions
            await self._set("stale_prices", False, "stale_prices_recovered", {}, silent=silent)
            return
        facts = {
            "count": len(stale),
            "positions": "; ".join(stale),
            "stale_after_s": f"{self._settings.price_stale_after_s:g}",
            "ttl_s": self._settings.price_cache_ttl_s,
        }
        await self._set("stale_prices", True, "stale_prices", facts)

    async def _heartbeat(self, name: str, now: float, dead: dict[str, float | None]) -> None:
        condition = f"heartbeat:{name}"
        if self._liveness.starting(name):  # not known yet: another instance may know better
            return
        if name not in dead:
            await self._set(condition, False, "heartbeat_back", {"service": name})
            return
        age = dead[name]
        facts = {
            "service": name,
            "age": f"more than {self._settings.heartbeat_ttl_s} s" if age is None else human_duration(age),
            "interval_s": f"{self._settings.heartbeat_interval_s:g}",
        }
        await self._set(condition, True, "heartbeat_lost", facts)
