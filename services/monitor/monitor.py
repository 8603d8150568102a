"""The monitor: SL/TP checks on every tick notice plus a sweep every second; closes through the shared Closer.

Two paths decide, and the Redis claim makes whichever is first the only one that sends an order:
- the tick path: one pub/sub notice per feed frame. A symbol without a position costs one dict lookup; a
  symbol with one is decided on the notice's price (the value just written to `price:SYMBOL`), no round trip.
- the sweep: every `monitor_sweep_interval_s` it re-reads the feed's health, every open position and its
  cached price. It keeps protection alive when ticks stop (the guide's fallback and Layer 3 lines), retries
  failed closes once their backoff is due, reconciles closes left `closing`, and runs at once after any
  pub/sub (re)subscribe, because pub/sub loses what it missed.
Redis is the truth; the monitor keeps only caches and log throttles.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import RedisError

from libs.common import keys
from libs.common.broker import Broker, BrokerError, BrokerOutcomeUnknown, OrdersBlocked
from libs.common.broker_positions import BrokerPositions
from libs.common.clock import Clock, SystemClock
from libs.common.closing import Closer, CloseRequest
from libs.common.freshness import FeedLiveness, FreshnessPolicy, PriceTruth, read_feed_liveness
from libs.common.heartbeat import beat_forever
from libs.common.instruments import InstrumentIndex, guard_instruments
from libs.common.journal import JournalCap
from libs.common.logging import tagged
from libs.common.metrics import TICK_TO_DECISION
from libs.common.models import CloseReason, MalformedRecord, Position, PositionState, PriceSource
from libs.common.money import ltp_paise, to_paise
from libs.common.order_gate import OrderGate
from libs.common.positions import PositionConflict, PositionNotFound, PositionStore
from libs.common.price_cache import parse_notice
from libs.common.replication import ClaimConfirmation
from libs.common.safety_net import create_safety_net
from libs.common.settings import Settings
from libs.common.tasks import cancel_and_wait
from services.monitor.decision import (
    PriceView,
    closed_line,
    fallback_line,
    retry_delay_s,
    trigger_line,
    trigger_tag,
    view_of,
)
from services.monitor.expiry import ExpiryWatch
from services.monitor.reconcile import BrokerReconciler
from services.monitor.safety_net import SafetyNetKeeper
from services.monitor.snapshot import SnapshotReader

SERVICE = "monitor"
# Events that may change what the tick path must know about a symbol's position.
_REFRESH_ON = frozenset({"opened", "levels_changed", "reopened", "close_failed", "monitored_again", "reduced"})
_FORGET_ON = frozenset({"closing", "closed", "removed"})
_SAFETY_NET_ON = frozenset({"opened", "levels_changed", "reopened", "reduced"})  # the GTT may need a change
_PUBSUB_RETRY_S = (0.1, 2.0)  # first and capped delay between pub/sub reconnects


@dataclass(slots=True)
class SweepReport:
    """What one sweep saw and did."""

    feed_live: bool = False
    checked: int = 0
    triggered: int = 0
    unmonitored: int = 0
    malformed: int = 0
    reconciling: int = 0
    duration_ms: float = 0.0


class Monitor:
    """Protects every open position in Redis. `run()` is the service; tests drive `sweep_once()`/`on_notice()`."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        broker: Broker,
        clock: Clock | None = None,
        *,
        jitter: Callable[[], float] = random.random,
        instruments: InstrumentIndex | None = None,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._clock: Clock = clock or SystemClock()
        self._store = PositionStore(redis, self._clock)
        self._snapshots = SnapshotReader(redis)
        self._journal_cap = JournalCap(redis, settings.journal_maxlen)
        holdings = BrokerPositions(redis, broker, self._clock, max_age_s=settings.broker_positions_max_age_s)
        gate = OrderGate(redis, self._clock)
        net = create_safety_net(settings, redis, broker, self._clock)
        self._closer = Closer(
            self._store,
            broker,
            self._clock,
            holdings=holdings,
            gate=gate,
            settings=settings,
            safety_net=net,
            confirmation=ClaimConfirmation(redis, settings),
        )
        self.safety_net = None
        if net is not None:
            self.safety_net = SafetyNetKeeper(
                settings, redis, net, self._store, self._clock, close_fired=self.close_fired_safety_net, gate=gate
            )
        self.reconciler = BrokerReconciler(settings, redis, self._store, self._closer, holdings, broker, self._clock)
        self._jitter = jitter
        index = instruments or guard_instruments(settings, self._clock)
        self._expiry = ExpiryWatch(self._store, index, self._clock, warn_min=settings.fno_expiry_warn_min)
        self._watch: dict[str, Position] = {}  # open positions by symbol: all the tick path needs
        self._inflight: dict[str, asyncio.Task[None]] = {}  # one close or reconcile per symbol at a time
        # Change numbers order what happened here (a clock can stand still between two of them):
        self._changes = itertools.count(1)
        self._inflight_since: dict[str, int] = {}  # when each close or reconcile in flight began
        self._settle_due: dict[str, float] = {}  # claim id of a close ended here unconfirmed -> when to settle it
        # when an event or a close here last changed what the tick path knows of a symbol: a sweep whose read
        # began before that is older news for it
        self._touched: dict[str, int] = {}
        self._opened: dict[str, int] = {}  # when the last "opened" event of each symbol arrived
        self._last_sweep_began = 0
        self._background: set[asyncio.Task[None]] = set()
        self._refreshing: set[str] = set()
        self._refresh_again: set[str] = set()
        # notice prices seen while a refresh was in flight
        self._pending: dict[str, list[tuple[str, float, PriceSource]]] = {}
        self._unmonitored: set[str] = set()
        self._fallback_logged_at: dict[str, float] = {}
        self._reported_bad: dict[str, str] = {}  # key -> the malformed-record error last reported
        self._feed_live: bool | None = None
        self._policy = FreshnessPolicy.from_settings(settings)
        self._feed = FeedLiveness(False, "not read yet")
        self._silent: dict[str, str] = {}  # symbols the feed reported silent, with the reason (logged once)
        self._redis_down = False
        self._started = False
        self._subscriptions_ensured = False
        self._wake = asyncio.Event()
        self._retry_on_new_token: set[str] = set()  # symbols whose close backoff a new access token lifts
        self.bad_notices = 0
        self.sweeps = 0

    @property
    def watched(self) -> dict[str, Position]:
        """The open positions the tick path currently decides on (a copy)."""
        return dict(self._watch)

    # --- start-up ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Settle closes left `closing` by a stopped closer (by the broker's order tag) and make sure the
        feed subscribes every open position's symbol. Raises RedisError when Redis is down."""
        items = await self._read_positions()
        await self.ensure_subscriptions(items)
        now = self._clock.now()
        for _, item in items:
            # A young claim may belong to a close still running elsewhere (the api): reconciling it now could
            # reopen a position whose order is about to be sent. The sweep settles it once it is stuck.
            if isinstance(item, Position) and item.state is PositionState.CLOSING and self._stuck(item, now):
                self._spawn_reconcile(item)
        self._started = True

    async def ensure_subscriptions(self, items: list[tuple[str, Position | MalformedRecord]] | None = None) -> int:
        """Record every open position's symbol in `feed:subscriptions` and ask the feed to subscribe it now."""
        if items is None:
            items = await self._read_positions()
        wanted = [p for _, p in items if isinstance(p, Position) and p.state is not PositionState.CLOSED]
        if wanted:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hset(keys.FEED_SUBSCRIPTIONS, mapping={p.symbol: p.instrument_key for p in wanted})
                for p in wanted:
                    pipe.publish(keys.SUBSCRIPTION_REQUESTS_CHANNEL, f"sub {p.symbol} {p.instrument_key}")
                await pipe.execute()
        self._subscriptions_ensured = True
        return len(wanted)

    # --- the sweep ---------------------------------------------------------------------------------

    async def feed_live(self) -> bool:
        """The feed is live when `feed:status` says connected and the feed process's heartbeat is recent."""
        self._feed = await read_feed_liveness(self._redis, self._policy, self._clock)
        return self._feed.live

    async def sweep_once(self) -> SweepReport:
        """Check every open position on its cached price once; start closes, retries and reconciles as due."""
        started = self._clock.monotonic()
        began = next(self._changes)
        now = self._clock.now()
        report = SweepReport(feed_live=await self.feed_live())
        self._note_feed(report.feed_live)
        fresh: dict[str, Position] = {}
        async for part in self._snapshots.read_slices():  # the event loop runs between slices
            positions: dict[str, Position] = {}
            for symbol, item in part.positions.items():
                if isinstance(item, MalformedRecord):
                    report.malformed += 1
                    await self._report_malformed(symbol, item)
                    continue
                self._reported_bad.pop(keys.position(symbol), None)
                positions[symbol] = item
                if item.state is PositionState.OPEN:
                    fresh[symbol] = item
            for symbol, position in positions.items():
                if position.state is PositionState.CLOSING:
                    # not when a reconcile here settled it after this read began: the read is older than that
                    if self._touched.get(symbol, 0) <= began and self._stuck(position, now):
                        report.reconciling += 1
                        self._spawn_reconcile(position)
                    continue
                if position.state is not PositionState.OPEN:
                    continue
                if self._touched.get(symbol, 0) > began:  # an event or a close told the tick path newer news
                    known = self._watch.get(symbol)
                    if known is None:
                        continue
                    position = known
                report.checked += 1
                await self._check(position, part.prices.get(symbol), report, now)
        for symbol, touched in self._touched.items():
            if touched > began:  # what the tick path learned after this read began is newer than the read
                known = self._watch.get(symbol)
                if known is None:
                    fresh.pop(symbol, None)
                else:
                    fresh[symbol] = known
        self._watch = fresh
        await self._journal_cap.enforce()
        # older changes are in this read; keep one sweep's worth more for a sweep still running (tests overlap them)
        self._touched = {s: n for s, n in self._touched.items() if n > self._last_sweep_began}
        self._last_sweep_began = began
        await self._expiry.check(fresh.values())
        report.duration_ms = (self._clock.monotonic() - started) * 1000
        self.sweeps += 1
        return report

    async def _check(
        self, position: Position, cached: PriceTruth | MalformedRecord | None, report: SweepReport, now: float
    ) -> None:
        symbol = position.symbol
        if isinstance(cached, MalformedRecord):
            report.malformed += 1
            self._report_bad_once(keys.price(symbol), str(cached))
            return
        self._reported_bad.pop(keys.price(symbol), None)
        view = None
        if cached is not None:
            view = view_of(cached.ltp, self._policy.judge(cached, now, self._feed))
            self._note_silent(symbol, cached.silent)
        if view is None:
            # A position opened a moment ago on a live feed is waiting for its first tick, not unmonitored.
            if report.feed_live and now - position.opened_at < self._settings.price_stale_after_s:
                return
            report.unmonitored += 1
            await self._lost_price(position, now)
            return
        if symbol in self._unmonitored or position.unmonitored_since is not None:
            await self._price_back(position, view)
        if self._evaluate(position, view, now):
            report.triggered += 1

    async def _read_positions(self) -> list[tuple[str, Position | MalformedRecord]]:
        symbols = await self._store.open_symbols()
        return list(zip(symbols, await self._store.read_many(symbols), strict=True))

    def _stuck(self, position: Position, now: float) -> bool:
        if position.symbol in self._inflight:
            return False
        due = self._settle_due.get(position.claim_id)
        if due is not None and now >= due:
            return True
        claimed_at = position.claimed_at
        return claimed_at is None or now - claimed_at >= self._settings.monitor_stuck_close_s

    def _note_feed(self, live: bool) -> None:
        if live == self._feed_live:
            return
        if live:
            logger.info("Feed is live: checking SL/TP on live prices")
            self._fallback_logged_at.clear()  # the next outage logs its fallback prices at once
        else:
            logger.warning("Feed is not live: checking SL/TP on cached prices")
        self._feed_live = live

    def _note_silent(self, symbol: str, reason: str | None) -> None:
        """Say once when the feed finds a guarded instrument silent (its price ages from its last tick)."""
        if reason is None:
            if self._silent.pop(symbol, None) is not None:
                logger.info(f"{symbol} is ticking again")
        elif symbol not in self._silent:
            self._silent[symbol] = reason
            tagged("WARNING").warning(f"{symbol}: {reason}; checking SL/TP on its cached price with its true age")

    async def _lost_price(self, position: Position, now: float) -> None:
        """Layer 3: say it once per outage per position, record it on the position and raise an alert event."""
        symbol = position.symbol
        if symbol in self._unmonitored:
            return
        self._unmonitored.add(symbol)
        if position.unmonitored_since is not None:  # already reported (by this monitor before a restart)
            return
        tagged("FALLBACK").info(f"Price cache expired for {symbol}")
        logger.warning(f"Can't monitor {symbol} - no fresh prices")
        if await self._store.mark_unmonitored(symbol, now):
            await self._store.publish_event(
                "unmonitored", symbol, since=now, message=f"Can't monitor {symbol} - no fresh prices"
            )

    async def _price_back(self, position: Position, view: PriceView) -> None:
        symbol = position.symbol
        self._unmonitored.discard(symbol)
        if position.unmonitored_since is None:
            return
        logger.info(f"Monitoring {symbol} again: {view.source.value} price available")
        if await self._store.mark_unmonitored(symbol, None):
            await self._store.publish_event("monitored_again", symbol, price_source=view.source.value)

    async def _report_malformed(self, symbol: str, exc: MalformedRecord) -> None:
        if self._report_bad_once(keys.position(symbol), str(exc)):
            await self._store.publish_event("malformed", symbol, error=str(exc)[:500])

    def _report_bad_once(self, key: str, error: str) -> bool:
        if self._reported_bad.get(key) == error:
            return False
        self._reported_bad[key] = error
        one_line = "; ".join(part.strip() for part in error.splitlines() if part.strip())  # one greppable line
        logger.error(f"Skipping malformed record {key}: {one_line[:300]}")
        return True

    # --- the tick path -----------------------------------------------------------------------------

    def on_notice(self, payload: str) -> int:
        """Decide every watched symbol of one tick notice on the notice's price. Returns closes started."""
        try:
            as_of, prices, rest = parse_notice(payload)
        except (ValueError, KeyError, TypeError):
            self.bad_notices += 1
            return 0
        # A notice is published only for prices just written: live from the WebSocket, or a REST poll's answer.
        source = PriceSource.REST if rest else PriceSource.LIVE
        for symbol in self._refreshing:  # decided as soon as its refresh lands
            if symbol in prices:
                self._pending.setdefault(symbol, []).append((prices[symbol], as_of, source))
        watch = self._watch
        if not watch:
            return 0
        if len(watch) < len(prices):
            hits = [(s, prices[s]) for s in watch if s in prices]
        else:
            hits = [(s, ltp) for s, ltp in prices.items() if s in watch]
        if not hits:
            return 0
        now = self._clock.now()
        age_s = max(0.0, now - as_of)
        started = 0
        for symbol, ltp in hits:
            try:
                price = ltp_paise(ltp)
            except ValueError:
                self.bad_notices += 1  # one absurd price skips only itself
                continue
            if self._evaluate(watch[symbol], PriceView(price, source, age_s), now):
                started += 1
        TICK_TO_DECISION.observe(max(0.0, self._clock.now() - as_of))  # one per notice: its last decision
        return started

    def _evaluate(self, position: Position, view: PriceView, now: float) -> bool:
        """Start a close when the price crosses a level and no close or backoff holds it; log as the guide does."""
        symbol = position.symbol
        trigger = position.trigger(view.price)
        if trigger is None:
            if view.fallback:
                self._log_fallback_throttled(symbol, view)
            return False
        if self._busy(symbol):
            return False
        backoff = position.next_attempt_at is not None and now < position.next_attempt_at
        if backoff and symbol not in self._retry_on_new_token:
            return False
        self._retry_on_new_token.discard(symbol)
        if view.fallback:
            tagged("FALLBACK").info(fallback_line(symbol, view))
            self._fallback_logged_at[symbol] = self._clock.monotonic()
        tagged(trigger_tag(trigger)).info(trigger_line(symbol, view, trigger))
        request = CloseRequest(
            symbol=symbol,
            reason=trigger.reason,
            closed_by=SERVICE,
            decision_price=view.price,
            price_source=view.source,
            price_age_s=round(view.age_s, 3),
            decided_at=self._clock.now(),
        )
        self._track(symbol, asyncio.create_task(self._close(position, request), name=f"monitor.close.{symbol}"))
        return True

    def close_fired_safety_net(self, position: Position) -> None:
        """The broker's stop (Layer 0) fired: settle the position through the normal close path, whose disarm
        takes the GTT's fill as the close, or cancels an order a gap left open and sells the rest."""
        if self._busy(position.symbol):
            return
        request = CloseRequest(
            symbol=position.symbol,
            reason=CloseReason.STOP_LOSS,
            closed_by=SERVICE,
            decision_price=None,
            price_source=PriceSource.BROKER,
            price_age_s=None,
            decided_at=self._clock.now(),
        )
        task = asyncio.create_task(self._close(position, request), name=f"monitor.close.{position.symbol}")
        self._track(position.symbol, task)

    def _log_fallback_throttled(self, symbol: str, view: PriceView) -> None:
        mono = self._clock.monotonic()
        last = self._fallback_logged_at.get(symbol)
        if last is None or mono - last >= self._settings.monitor_fallback_log_interval_s:
            self._fallback_logged_at[symbol] = mono
            tagged("FALLBACK").info(fallback_line(symbol, view))

    def _busy(self, symbol: str) -> bool:
        """A close or reconcile of this symbol's current position is running here.

        One begun before the symbol's last "opened" event is finishing a previous position: an open needs the
        old one closed in Redis first, so it holds nothing back.
        """
        if symbol not in self._inflight:
            return False
        return self._inflight_since[symbol] > self._opened.get(symbol, 0)

    def _track(self, symbol: str, task: asyncio.Task[None]) -> None:
        self._inflight[symbol] = task
        self._inflight_since[symbol] = next(self._changes)

        def _done(t: asyncio.Task[None]) -> None:
            if self._inflight.get(symbol) is t:
                del self._inflight[symbol]
                del self._inflight_since[symbol]

        task.add_done_callback(_done)

    # --- closing -----------------------------------------------------------------------------------

    async def _close(self, position: Position, request: CloseRequest) -> None:
        symbol = position.symbol
        begun = next(self._changes)
        now = self._clock.now()
        delay_s = retry_delay_s(
            position.close_attempts, self._settings.close_retry_base_s, self._settings.close_retry_max_s, self._jitter()
        )
        try:
            record = await self._closer.close(request, retry_at=now + delay_s)
        except (PositionConflict, PositionNotFound) as exc:
            state = exc.state if isinstance(exc, PositionConflict) else "gone"
            logger.info(f"{symbol} is already {state}; the monitor does not close it again")
            self._forget(symbol, begun)
        except BrokerOutcomeUnknown as exc:
            logger.error(
                f"Close of {symbol} unconfirmed: {exc}; it stays closing and is settled with the broker by its "
                "order tag as soon as the broker answers"
            )
            # This closer has ended, so nothing else is in flight on its claim: settle it without waiting for
            # the stuck threshold (kept for claims whose closer may still be running elsewhere).
            self._settle_due[exc.claim_id] = now + delay_s
            self._forget(symbol, begun)
            await self._note_broker_error(str(exc), now)
        except OrdersBlocked as exc:
            # A configuration error (logged once as [ERROR] by the gate): retry at the slow, capped cadence.
            retry_s = self._settings.order_blocked_retry_s
            logger.warning(
                f"Close of {symbol} refused (order calls blocked); position stays open, retry in {retry_s:g}s"
            )
            self._watch[symbol] = position.model_copy(
                update={"next_attempt_at": now + retry_s, "close_attempts": position.close_attempts + 1,
                        "last_error": str(exc)}
            )  # fmt: skip
            self._touched[symbol] = next(self._changes)
            await self._note_broker_error(str(exc), now)
        except BrokerError as exc:
            attempt = position.close_attempts + 1
            logger.error(
                f"Close of {symbol} failed (attempt {attempt}): {exc}; position stays open, retrying in {delay_s:.1f}s"
            )
            self._watch[symbol] = position.model_copy(
                update={"next_attempt_at": now + delay_s, "close_attempts": attempt, "last_error": str(exc)}
            )
            self._touched[symbol] = next(self._changes)
            await self._note_broker_error(str(exc), now)
        except RedisError as exc:
            # The claim may be held with no order sent: the stuck-close reconcile settles it once Redis is back.
            self._redis_lost(exc)
        except Exception:
            logger.exception(f"Close of {symbol} failed unexpectedly; the sweep will look at it again")
        else:
            logger.success(closed_line(record))
            self._forget(symbol, begun)

    async def _note_broker_error(self, error: str, now: float) -> None:
        """Keep the last broker error where the api's status shows it."""
        with contextlib.suppress(RedisError):
            await self._redis.hset(
                keys.SERVICES_STATUS,
                mapping={"monitor.last_broker_error": error[:500], "monitor.last_broker_error_at": repr(now)},
            )

    def _forget(self, symbol: str, begun: int) -> None:
        """Drop the position a close or reconcile (begun at change `begun`) settled, unless the symbol was
        opened again since (its "opened" event can arrive before that close's task ends)."""
        if self._opened.get(symbol, 0) > begun:
            return
        self._watch.pop(symbol, None)
        self._touched[symbol] = next(self._changes)

    def _spawn_reconcile(self, position: Position) -> None:
        self._track(
            position.symbol, asyncio.create_task(self._reconcile(position), name=f"monitor.reconcile.{position.symbol}")
        )

    async def _reconcile(self, position: Position) -> None:
        symbol = position.symbol
        begun = next(self._changes)
        try:
            record = await self._closer.reconcile(position)
            self._touched[symbol] = next(self._changes)  # a sweep that read it closing before this must not redo it
        except BrokerError as exc:
            logger.error(f"Reconcile of {symbol} failed: {exc}; it stays closing and is retried")
            if position.claim_id in self._settle_due:
                self._settle_due[position.claim_id] = self._clock.now() + self._settings.close_retry_max_s
            return
        except RedisError as exc:
            self._redis_lost(exc)
            return
        self._settle_due.pop(position.claim_id, None)
        if record is not None and record.closed_by == "external":
            logger.warning(f"Reconciled {symbol}: no order of its close filled and the broker holds none of it")
            self._forget(symbol, begun)
        elif record is not None:
            logger.success(f"Reconciled {symbol}: the broker had filled its close. " + closed_line(record))
            self._forget(symbol, begun)
        else:
            logger.warning(f"Reconciled {symbol}: no filled order carries its close tag; position reopened")

    # --- events, pub/sub and the loops -------------------------------------------------------------

    def on_event(self, payload: str) -> None:
        """Keep the tick path's positions current from `positions:events`."""
        try:
            event: dict[str, Any] = json.loads(payload)
            kind, symbol = str(event["kind"]), str(event["symbol"])
        except (ValueError, KeyError, TypeError):
            return
        if self.safety_net is not None and kind in _SAFETY_NET_ON:
            self.safety_net.wake()
        if kind in _FORGET_ON:
            self._watch.pop(symbol, None)
            self._touched[symbol] = next(self._changes)
        elif kind == "opened" and self._learn_opened(symbol, event.get("position")):
            return
        elif kind in _REFRESH_ON:
            self._start_refresh(symbol)

    def _learn_opened(self, symbol: str, data: Any) -> bool:
        """Watch a new position from its "opened" event (the record as written), with no round trip: pub/sub
        delivers it before any tick notice published after it, so the tick path knows it in time."""
        if not isinstance(data, dict):
            return False
        try:
            fields = {k: v for k, v in data.items() if v is not None}
            for name in ("entry_price", "stop_loss", "take_profit"):
                if name in fields:
                    fields[name] = to_paise(fields[name])
            position = Position.model_validate(fields)
        except (ValueError, TypeError):  # pydantic's ValidationError is a ValueError
            return False
        if position.symbol != symbol or position.state is not PositionState.OPEN:
            return False
        change = next(self._changes)
        self._opened[symbol] = change
        self._touched[symbol] = change
        self._watch[symbol] = position
        return True

    def _start_refresh(self, symbol: str) -> None:
        if symbol in self._refreshing:
            self._refresh_again.add(symbol)  # the read in flight may predate this change
            return
        self._refreshing.add(symbol)
        task = asyncio.create_task(self._refresh(symbol), name=f"monitor.refresh.{symbol}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refresh(self, symbol: str) -> None:
        try:
            position = await self._store.get(symbol)
        except (MalformedRecord, RedisError):
            self._pending.pop(symbol, None)
            return  # the sweep reports it
        finally:
            self._refreshing.discard(symbol)
        pending = self._pending.pop(symbol, [])
        self._touched[symbol] = next(self._changes)
        if position is not None and position.state is PositionState.OPEN and not self._busy(symbol):
            self._watch[symbol] = position
            now = self._clock.now()
            for ltp, as_of, source in pending:  # notices that arrived during the read, in order
                with contextlib.suppress(ValueError):
                    view = PriceView(ltp_paise(ltp), source, max(0.0, now - as_of))
                    if self._evaluate(position, view, now):
                        break
        elif position is None or position.state is not PositionState.OPEN:
            self._watch.pop(symbol, None)
        if symbol in self._refresh_again:
            self._refresh_again.discard(symbol)
            self._start_refresh(symbol)

    def on_new_token(self) -> None:
        """A new access token was stored: a close held back by its backoff (e.g. after a 401) is retried now."""
        waiting = {s for s, p in self._watch.items() if p.next_attempt_at is not None}
        if waiting:
            logger.info(f"New access token: retrying the close of {', '.join(sorted(waiting))} now")
        self._retry_on_new_token = waiting
        self.request_sweep()

    def request_sweep(self) -> None:
        """Run the next sweep now instead of at the next interval."""
        self._wake.set()

    def _on_pubsub_connect(self, _connection: Connection) -> None:
        # redis-py resubscribes by itself after a reconnect; what was published meanwhile is lost: re-read.
        logger.info("Tick channel resubscribed; re-reading positions and prices")
        self.request_sweep()

    def _redis_lost(self, exc: BaseException) -> None:
        self._subscriptions_ensured = False
        if not self._redis_down:
            self._redis_down = True
            logger.error(
                f"Redis unavailable ({type(exc).__name__}: {exc}); positions are not checked until it returns, "
                f"retrying every {self._settings.monitor_sweep_interval_s:g}s"
            )

    def _redis_back(self) -> None:
        if self._redis_down:
            self._redis_down = False
            logger.success("Redis connection restored; monitoring resumed")

    async def _sweep_loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                if not self._started:
                    await self.start()
                elif not self._subscriptions_ensured:
                    await self.ensure_subscriptions()
                await self.sweep_once()
                self._redis_back()
            except (RedisError, OSError) as exc:
                self._redis_lost(exc)
            except Exception:
                logger.exception("Sweep failed; the next one runs as scheduled")
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that lands as the wake
            # event is set (a stop would then wait for a second cancel).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.monitor_sweep_interval_s):
                    await self._wake.wait()

    async def _listen_loop(self) -> None:
        delay_s = _PUBSUB_RETRY_S[0]
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(keys.TICKS_CHANNEL, keys.POSITION_EVENTS_CHANNEL, keys.CREDENTIALS_CHANNEL)
                if pubsub.connection is not None:
                    pubsub.connection.register_connect_callback(self._on_pubsub_connect)
                self.request_sweep()
                delay_s = _PUBSUB_RETRY_S[0]
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None or message.get("type") != "message":
                        continue
                    if message["channel"] == keys.TICKS_CHANNEL:
                        self.on_notice(message["data"])
                    elif message["channel"] == keys.CREDENTIALS_CHANNEL:
                        self.on_new_token()
                    else:
                        self.on_event(message["data"])
            except (RedisError, OSError) as exc:
                self._redis_lost(exc)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, _PUBSUB_RETRY_S[1])

    async def run(self) -> None:
        """The service: heartbeat, sweep loop and tick listener until cancelled; closes in flight get to finish."""
        loops = [
            asyncio.create_task(
                beat_forever(self._redis, SERVICE, self._settings, self._clock), name="monitor.heartbeat"
            ),
            asyncio.create_task(self._sweep_loop(), name="monitor.sweep"),
            asyncio.create_task(self._listen_loop(), name="monitor.ticks"),
            asyncio.create_task(self.reconciler.run(), name="monitor.reconcile"),
        ]
        if self.safety_net is not None:
            loops.append(asyncio.create_task(self.safety_net.run(), name="monitor.safety_net"))
        try:
            ended, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
            for loop in ended:
                loop.result()  # the loops run forever: one that ended has crashed
        finally:
            # Not a TaskGroup: it cancels its tasks once, and a cancel lost inside redis-py (Python 3.11) would
            # keep a loop, and so the service, running after SIGTERM. cancel_and_wait cancels again.
            await cancel_and_wait(loops)
            await self.drain(timeout_s=self._settings.broker_timeout_s, cancel_after=True)

    async def drain(self, timeout_s: float | None = None, *, cancel_after: bool = False) -> None:
        """Wait for closes, reconciles and refreshes in flight (at most `timeout_s`).

        With `cancel_after`, whatever is still running then is cancelled: a close cut short stays `closing`
        and the next start reconciles it with the broker by its order tag.
        """
        pending = [*self._inflight.values(), *self._background]
        if not pending:
            return
        _, still = await asyncio.wait(pending, timeout=timeout_s)
        if still and cancel_after:
            logger.warning(f"Stopping with {len(still)} close(s) unfinished; they are reconciled on the next start")
            for task in still:
                task.cancel()
            await asyncio.wait(still, timeout=1.0)
