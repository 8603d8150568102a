"""The monitor: SL/TP checks on every tick notice plus a sweep every second; closes through the shared Closer.

Two paths decide, and the Redis claim makes whichever is first the only one that sends an order:
- the tick path: one pub/sub notice per feed frame. A symbol without a position costs one dict lookup; a
  symbol with one is decided on the notice's price (the value just written to `price:SYMBOL`), no round trip.
- the sweep: every `monitor_sweep_interval_s` it re-reads the feed's health, every open position and its
  cached price. It keeps protection alive when ticks stop (the guide's fallback and Layer 3 lines), retries
  failed closes once their backoff is due, reconciles closes left `closing`, and runs at once after any
  pub/sub (re)subscribe, because pub/sub loses what it missed.
The decisions are `services.monitor.core.Core`'s (no I/O); this class does the reading, writing, logging and
the closes in flight. Redis is the truth; the monitor keeps only caches and log throttles.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Coroutine
from typing import Any

from loguru import logger
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import RedisError

from libs.common import keys
from libs.common.backoff import Backoff
from libs.common.broker import Broker, BrokerError, BrokerOutcomeUnknown, OrdersBlocked
from libs.common.broker_positions import BrokerPositions
from libs.common.clock import Clock, SystemClock
from libs.common.closing import Closer, CloseRequest
from libs.common.freshness import FeedLiveness, FreshnessPolicy, read_feed_liveness
from libs.common.instruments import InstrumentIndex, guard_instruments
from libs.common.journal import JournalCap
from libs.common.logging import tagged
from libs.common.metrics import TICK_TO_DECISION
from libs.common.models import MalformedRecord, Position, PositionState
from libs.common.order_gate import OrderGate
from libs.common.positions import PositionConflict, PositionNotFound, PositionStore
from libs.common.replication import ClaimConfirmation
from libs.common.safety_net import create_safety_net
from libs.common.service import supervise
from libs.common.settings import Settings
from services.monitor.core import SERVICE, Core
from services.monitor.decision import closed_line
from services.monitor.expiry import ExpiryWatch
from services.monitor.outputs import Line, Output, SweepReport
from services.monitor.reconcile import BrokerReconciler
from services.monitor.safety_net import SafetyNetKeeper
from services.monitor.snapshot import SnapshotReader

_PUBSUB_RETRY = Backoff(base_s=0.1, cap_s=2.0)  # between pub/sub reconnects (redis-py retries a blip itself first)


class Monitor:
    """Protects every open position in Redis. `run()` is the service; tests drive `sweep_once()`/`on_notice()`."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        broker: Broker,
        clock: Clock | None = None,
        *,
        rng: random.Random | None = None,
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
        # The close retry: base x 2**(failures - 1) up to the cap, the last quarter drawn off at random (a base
        # above the cap means the cap every time, as the settings always allowed).
        retry_base_s, retry_cap_s = settings.close_retry_base_s, settings.close_retry_max_s
        self._close_backoff = Backoff(
            min(retry_base_s, retry_cap_s), retry_cap_s, jitter=0.25, rng=rng or random.Random()
        )
        index = instruments or guard_instruments(settings, self._clock)
        self._expiry = ExpiryWatch(self._store, index, self._clock, warn_min=settings.fno_expiry_warn_min)
        self._core = Core(settings)
        self._policy = FreshnessPolicy.from_settings(settings)
        self._tasks: set[asyncio.Task[None]] = set()  # closes, reconciles and record reads in flight
        self._redis_down = False
        self._started = False
        self._subscriptions_ensured = False
        self._wake = asyncio.Event()
        self.sweeps = 0

    @property
    def watched(self) -> dict[str, Position]:
        """The open positions the tick path currently decides on (a copy)."""
        return self._core.watched

    @property
    def bad_notices(self) -> int:
        """Tick notices (or prices in them) that could not be read."""
        return self._core.bad_notices

    # --- start-up ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Settle closes left `closing` by a stopped closer (by the broker's order tag) and make sure the
        feed subscribes every open position's symbol. Raises RedisError when Redis is down."""
        items = await self._read_positions()
        await self.ensure_subscriptions(items)
        now, out = self._clock.now(), Output()
        for _, item in items:
            # A young claim may belong to a close still running elsewhere (the api): reconciling it now could
            # reopen a position whose order is about to be sent. The sweep settles it once it is stuck.
            if isinstance(item, Position) and item.state is PositionState.CLOSING and self._core.stuck(item, now):
                self._core.reconcile(item, out)
        self._carry_out(out)
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

    async def _read_positions(self) -> list[tuple[str, Position | MalformedRecord]]:
        symbols = await self._store.open_symbols()
        return list(zip(symbols, await self._store.read_many(symbols), strict=True))

    # --- the sweep ---------------------------------------------------------------------------------

    async def feed_live(self) -> bool:
        """The feed is live when `feed:status` says connected and the feed process's heartbeat is recent."""
        return (await self._feed_liveness()).live

    async def _feed_liveness(self) -> FeedLiveness:
        return await read_feed_liveness(self._redis, self._policy, self._clock)

    async def sweep_once(self) -> SweepReport:
        """Check every open position on its cached price once; start closes, retries and reconciles as due."""
        started = self._clock.monotonic()
        now = self._clock.now()
        sweep = self._core.sweep(await self._feed_liveness())
        async for part in self._snapshots.read_slices():  # the event loop runs between slices
            out = self._core.check_slice(sweep, part, now)
            self._carry_out(out)
            await self._record(out)
        watched = self._core.end_sweep(sweep)
        await self._journal_cap.enforce()
        await self._expiry.check(watched)
        report = sweep.report
        report.duration_ms = (self._clock.monotonic() - started) * 1000
        self.sweeps += 1
        return report

    async def _record(self, out: Output) -> None:
        """Write what a sweep found on the positions: lost or regained prices (Layer 3), malformed records."""
        for mark in out.marks:
            rev = await self._store.mark_unmonitored(mark.symbol, mark.since)
            if rev and mark.since is not None:
                message = f"Can't monitor {mark.symbol} - no fresh prices"
                await self._store.publish_event("unmonitored", mark.symbol, since=mark.since, message=message, rev=rev)
            elif rev and mark.source is not None:
                await self._store.publish_event("monitored_again", mark.symbol, price_source=mark.source.value, rev=rev)
        for symbol, error in out.malformed:
            await self._store.publish_event("malformed", symbol, error=error[:500])

    # --- the core's inputs -------------------------------------------------------------------------

    def on_notice(self, payload: str) -> int:
        """Decide every watched symbol of one tick notice on the notice's price. Returns closes started."""
        out = self._core.notice(payload, self._clock.now())
        self._carry_out(out)
        return len(out.closes)

    def on_event(self, payload: str) -> None:
        """Keep the tick path's positions current from `positions:events`."""
        self._carry_out(self._core.event(payload))

    def on_new_token(self) -> None:
        """A new access token was stored: a close held back by its backoff (e.g. after a 401) is retried now."""
        self._carry_out(self._core.new_token())
        self.request_sweep()

    def close_fired_safety_net(self, position: Position) -> None:
        """The broker's stop (Layer 0) fired: close it through the normal close path (see `Core`)."""
        self._carry_out(self._core.safety_net_fired(position, self._clock.now()))

    def _carry_out(self, out: Output) -> None:
        """Log the core's lines and start its closes, reconciles and reads (marks are the sweep's, see `_record`)."""
        for line in out.lines:
            _emit(line)
        for close in out.closes:
            self._spawn(self._close(close.position, close.request), close.position, f"close.{close.position.symbol}")
        for position in out.reconciles:
            self._spawn(self._reconcile(position), position, f"reconcile.{position.symbol}")
        for symbol in out.reads:
            self._spawn(self._read(symbol), None, f"read.{symbol}")
        if out.wake_safety_net and self.safety_net is not None:
            self.safety_net.wake()
        if out.tick_as_of is not None:
            TICK_TO_DECISION.observe(max(0.0, self._clock.now() - out.tick_as_of))  # one per notice

    def _spawn(self, work: Coroutine[Any, Any, None], position: Position | None, name: str) -> None:
        """Run `work` as a task drained on stop; the core learns when the close or reconcile of `position` ends."""
        task = asyncio.create_task(work, name=f"monitor.{name}")
        self._tasks.add(task)

        def _done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if position is not None:
                self._core.ended(position)

        task.add_done_callback(_done)

    async def _read(self, symbol: str) -> None:
        try:
            rev, position = await self._store.read_at_rev(symbol)
        except (MalformedRecord, RedisError):
            self._core.read_failed(symbol)  # the sweep reports it
            return
        self._carry_out(self._core.read(symbol, rev, position, self._clock.now()))

    # --- closing -----------------------------------------------------------------------------------

    async def _close(self, position: Position, request: CloseRequest) -> None:
        symbol = position.symbol
        now = self._clock.now()
        delay_s = self._close_backoff.compute(position.close_attempts + 1)
        try:
            record = await self._closer.close(request, retry_at=now + delay_s)
        except (PositionConflict, PositionNotFound) as exc:
            state = exc.state if isinstance(exc, PositionConflict) else "gone"
            logger.info(f"{symbol} is already {state}; the monitor does not close it again")
            self._core.settled(position)
        except BrokerOutcomeUnknown as exc:
            logger.error(
                f"Close of {symbol} unconfirmed: {exc}; it stays closing and is settled with the broker by its "
                "order tag as soon as the broker answers"
            )
            self._core.unconfirmed(position, exc.claim_id, now + delay_s)
            await self._note_broker_error(str(exc), now)
        except OrdersBlocked as exc:
            # A configuration error (logged once as [ERROR] by the gate): retry at the slow, capped cadence.
            retry_s = self._settings.order_blocked_retry_s
            logger.warning(
                f"Close of {symbol} refused (order calls blocked); position stays open, retry in {retry_s:g}s"
            )
            self._core.held_back(position, now + retry_s, str(exc))
            await self._note_broker_error(str(exc), now)
        except BrokerError as exc:
            attempt = position.close_attempts + 1
            logger.error(
                f"Close of {symbol} failed (attempt {attempt}): {exc}; position stays open, retrying in {delay_s:.1f}s"
            )
            self._core.held_back(position, now + delay_s, str(exc))
            await self._note_broker_error(str(exc), now)
        except RedisError as exc:
            # The claim may be held with no order sent: the stuck-close reconcile settles it once Redis is back.
            self._redis_lost(exc)
        except Exception:
            logger.exception(f"Close of {symbol} failed unexpectedly; the sweep will look at it again")
        else:
            logger.success(closed_line(record))
            self._core.settled(position)

    async def _note_broker_error(self, error: str, now: float) -> None:
        """Keep the last broker error where the api's status shows it."""
        with contextlib.suppress(RedisError):
            await self._redis.hset(
                keys.SERVICES_STATUS,
                mapping={"monitor.last_broker_error": error[:500], "monitor.last_broker_error_at": repr(now)},
            )

    async def _reconcile(self, position: Position) -> None:
        symbol = position.symbol
        try:
            record = await self._closer.reconcile(position)
        except BrokerError as exc:
            logger.error(f"Reconcile of {symbol} failed: {exc}; it stays closing and is retried")
            self._core.reconcile_failed(position, self._clock.now())
            return
        except RedisError as exc:
            self._redis_lost(exc)
            return
        self._core.reconciled(position, closed=record is not None)
        if record is not None and record.closed_by == "external":
            logger.warning(f"Reconciled {symbol}: no order of its close filled and the broker holds none of it")
        elif record is not None:
            logger.success(f"Reconciled {symbol}: the broker had filled its close. " + closed_line(record))
        else:
            logger.warning(f"Reconciled {symbol}: no filled order carries its close tag; position reopened")

    # --- pub/sub and the loops ---------------------------------------------------------------------

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
        failures = 0
        handlers = {
            keys.TICKS_CHANNEL: self._on_tick_message,
            keys.POSITION_EVENTS_CHANNEL: self._on_event_message,
            keys.CREDENTIALS_CHANNEL: self._on_credentials_message,
        }
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(**handlers)
                if pubsub.connection is not None:
                    pubsub.connection.register_connect_callback(self._on_pubsub_connect)
                self.request_sweep()
                failures = 0
                await pubsub.run(poll_timeout=1.0)  # dispatches each message to its channel's handler
            except (RedisError, OSError) as exc:
                self._redis_lost(exc)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            failures += 1
            await asyncio.sleep(_PUBSUB_RETRY.compute(failures))

    def _on_tick_message(self, message: dict[str, Any]) -> None:
        self.on_notice(message["data"])

    def _on_event_message(self, message: dict[str, Any]) -> None:
        self.on_event(message["data"])

    def _on_credentials_message(self, _message: dict[str, Any]) -> None:
        self.on_new_token()

    async def run(self) -> None:
        """The service until cancelled: heartbeat, sweep loop, tick listener, broker reconcile (and the safety-net
        keeper), each restarted after a failure (libs/common/service.py); closes in flight then get to finish."""
        loops = {"sweep": self._sweep_loop, "ticks": self._listen_loop, "reconcile": self.reconciler.run}
        if self.safety_net is not None:
            loops["safety_net"] = self.safety_net.run
        try:
            await supervise(SERVICE, loops, redis=self._redis, settings=self._settings, clock=self._clock)
        finally:
            await self.drain(timeout_s=self._settings.broker_timeout_s, cancel_after=True)

    async def drain(self, timeout_s: float | None = None, *, cancel_after: bool = False) -> None:
        """Wait for closes, reconciles and refreshes in flight (at most `timeout_s`).

        With `cancel_after`, whatever is still running then is cancelled: a close cut short stays `closing`
        and the next start reconciles it with the broker by its order tag.
        """
        pending = list(self._tasks)
        if not pending:
            return
        _, still = await asyncio.wait(pending, timeout=timeout_s)
        if still and cancel_after:
            logger.warning(f"Stopping with {len(still)} close(s) unfinished; they are reconciled on the next start")
            for task in still:
                task.cancel()
            await asyncio.wait(still, timeout=1.0)


def _emit(line: Line) -> None:
    (tagged(line.tag) if line.tag else logger).log(line.level, line.message)
