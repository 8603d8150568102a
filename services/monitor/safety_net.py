"""The monitor's keeper of Layer 0: a GTT stop at the broker for every open position (`libs.common.safety_net`).

Every sweep interval (and at once after a position event) it brings each open position's GTT in line with
the position: placed when missing (registered, adopted, reopened), modified when the stop-loss or the
quantity moved, re-placed when it expired or was cancelled outside the guard. A failed call is retried with
backoff (static-IP blocks at `ORDER_BLOCKED_RETRY_S`), shown on the position and raised as an event; the
guard's own layers do not wait for it. At start and every `RECONCILE_INTERVAL_S` it asks the broker which
GTTs fired while nobody looked: those positions go through the normal close path, whose disarm settles them
from the GTT's order (`closed_by: "safety_net"`) or takes over an order a gap left open.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import cast

from loguru import logger
from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.common import keys
from libs.common.broker import BrokerError, BrokerOutcomeUnknown, OrdersBlocked
from libs.common.clock import Clock
from libs.common.models import MalformedRecord, Position, PositionState
from libs.common.money import fmt_inr
from libs.common.order_gate import OrderGate
from libs.common.positions import PositionStore
from libs.common.safety_net import NetState, SafetyNet, trigger_for
from libs.common.settings import Settings

_REPLACE = ("", "cancelled", "ended")  # no GTT can act for the position: place one
_RENEW_BEFORE_S = {"I": 0.0}  # intraday GTTs are re-placed once expired; longer ones a day before their end
_RENEW_DEFAULT_S = 86400.0
# At most 5 keeper calls a second: half of Upstox's 10 order calls/s (GTTs count among them) stays free for closes.
_CALL_GAP_S = 0.2


class SafetyNetKeeper:
    """Places, modifies and re-places the GTTs; notices the ones that fired. `run()` until cancelled."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        net: SafetyNet,
        store: PositionStore,
        clock: Clock,
        *,
        close_fired: Callable[[Position], None],
        gate: OrderGate | None = None,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._net = net
        self._store = store
        self._clock = clock
        self._close_fired = close_fired
        self._gate = gate
        self._wake = asyncio.Event()
        self._checked_at: float | None = None

    def wake(self) -> None:
        """Look at the positions now (one was opened, moved or reopened)."""
        self._wake.set()

    async def recover(self) -> int:
        """At start: a broker call marked in flight belongs to a keeper that is gone (this one is the only one),
        so its outcome is unknown and settled from what the broker lists. Returns how many were marked."""
        symbols = await self._store.open_symbols()  # open or closing
        marked = 0
        for symbol, net in (await self._net.states(symbols)).items():
            if net.busy_since is not None:
                await self._net.end(symbol, state="unknown")
                marked += 1
        return marked

    async def run(self) -> None:
        recovered = False
        while True:
            self._wake.clear()
            try:
                if not recovered:
                    await self.recover()
                    recovered = True
                now = self._clock.monotonic()
                if self._checked_at is None or now - self._checked_at >= self._settings.reconcile_interval_s:
                    await self.check_fired()
                    self._checked_at = now
                await self.keep_once()
            except (RedisError, OSError) as exc:
                logger.warning(f"Safety net check skipped: Redis unreachable ({type(exc).__name__})")
            except BrokerError as exc:
                logger.warning(f"Safety net check skipped: {exc}")
            except Exception:
                logger.exception("Safety net check failed; the next one runs as scheduled")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings.monitor_sweep_interval_s)

    async def _open_positions(self) -> list[tuple[Position, NetState]]:
        symbols = await self._store.open_symbols()
        async with self._redis.pipeline(transaction=False) as pipe:
            for symbol in symbols:
                pipe.hgetall(keys.position(symbol))
            rows = cast(list[dict[str, str]], await pipe.execute())
        out = []
        for row in rows:
            try:
                position = Position.from_redis(row)
            except MalformedRecord:
                continue  # the monitor's sweep reports it
            if position.state is PositionState.OPEN:
                out.append((position, NetState.from_fields(dict(row))))
        return out

    # --- keeping every GTT in line -------------------------------------------------------------
    async def keep_once(self) -> int:
        """One pass over the open positions; returns how many broker calls it made."""
        calls = 0
        now = self._clock.now()
        for position, net in await self._open_positions():
            trigger = trigger_for(
                position, self._settings.safety_net_buffer_pct, self._net.tick_of(position.instrument_key)
            )
            if trigger is None:
                if net.state != "none":
                    await self._net.end(position.symbol, state="none", last_error="no stop-loss to keep at the broker")
                continue
            if net.state == "fired":  # its stop was hit at the broker: the guard finishes the exit, never re-arms
                if position.next_attempt_at is None or now >= position.next_attempt_at:
                    self._close_fired(position)
                continue
            if net.busy_since is not None:
                if now - net.busy_since > self._settings.broker_timeout_s * 3:  # a keeper died mid-call
                    await self._net.end(position.symbol, state="unknown")
                continue
            if net.next_at is not None and now < net.next_at:
                continue
            action = self._action(position, net, trigger, now)
            if action is None:
                continue
            if calls:
                await asyncio.sleep(_CALL_GAP_S)
            if await self._net.begin(position.symbol, trigger) != "ok":
                continue
            calls += 1
            await self._call(action, position, net, trigger)
        return calls

    def _action(self, position: Position, net: NetState, trigger: int, now: float) -> str | None:
        if net.state == "unknown":
            return "settle" if not net.gtt_id else "modify"
        if not net.gtt_id or net.state in _REPLACE:
            return "place"
        if net.expires_at is not None:
            renew_s = _RENEW_BEFORE_S.get(self._settings.order_product, _RENEW_DEFAULT_S)
            if now >= net.expires_at - renew_s:
                return "renew"
        if net.trigger != trigger or net.quantity != position.quantity:
            return "modify"
        return None

    async def _call(self, action: str, position: Position, net: NetState, trigger: int) -> None:
        symbol = position.symbol
        try:
            if action == "settle":
                stray = await self._net.find_stray(position, net.intent or trigger)
                if stray is not None:
                    await self._placed(position, stray, trigger, "found at the broker after an unanswered call")
                    return
                action = "place"
            if action == "renew":
                await self._net.cancel(net.gtt_id)
                logger.info(f"{symbol}: safety net GTT {net.gtt_id} expires; placing a new one")
                action = "place"
            if action == "modify":
                try:
                    await self._net.modify(net.gtt_id, position, trigger)
                except BrokerError as exc:
                    if "UDAPI1134" not in str(exc) and "UDAPI1135" not in str(exc):
                        raise
                    await self._net.end(symbol)  # the call is over; what became of the GTT decides the rest
                    await self._not_active(position, net)
                    return
                await self._placed(position, net.gtt_id, trigger, "modified")
                return
            gtt_id = await self._net.place(position, trigger)
            await self._placed(position, gtt_id, trigger, "placed")
        except BrokerOutcomeUnknown as exc:
            # The broker may have acted: settle from what it lists next round, never place blindly again.
            await self._failed(position, net, exc, state="unknown", placing=action == "place")
        except BrokerError as exc:
            await self._failed(position, net, exc, state="retrying", placing=action == "place")
        except BaseException:
            with contextlib.suppress(RedisError):
                await self._net.end(symbol, state="unknown")
            raise

    async def _placed(self, position: Position, gtt_id: str, trigger: int, how: str) -> None:
        symbol = position.symbol
        state = await self._net.end(
            symbol, state="active", gtt_id=gtt_id, trigger=f"{trigger / 100:.2f}", quantity=position.quantity,
            expires_at="", last_error="", attempts=0, next_at="", order_id="",
        )  # fmt: skip
        if self._gate is not None:
            await self._gate.accepted()
        if state == "open":  # when it lapses, read after the call is over so no closer waits for it
            await self._net.end(symbol, expires_at=await self._expiry(gtt_id))
        if state != "open":  # closed or removed while the call was out: this GTT must not outlive it
            logger.warning(f"{symbol}: {state} while its safety net was being {how}; cancelling GTT {gtt_id}")
            with contextlib.suppress(BrokerError):
                if await self._net.cancel(gtt_id):
                    await self._net.end(symbol, state="cancelled")
            return
        side = "below" if trigger < (position.stop_loss or 0) else "above"
        logger.info(
            f"{symbol}: safety net {how} at the broker: GTT {gtt_id}, {position.quantity} at {fmt_inr(trigger)} "
            f"({side} the stop-loss {fmt_inr(position.stop_loss or 0)})"
        )
        await self._store.publish_event(
            "safety_net_placed", symbol, gtt_id=gtt_id, trigger_price=trigger / 100, how=how
        )

    async def _expiry(self, gtt_id: str) -> str:
        with contextlib.suppress(BrokerError, KeyError, TypeError, ValueError):
            listed = await self._net.live_gtts()
            return repr(int(listed[gtt_id]["expires_at"]) / 1_000_000)
        return ""

    async def _failed(self, position: Position, net: NetState, exc: BrokerError, *, state: str, placing: bool) -> None:
        attempt = net.attempts + 1
        blocked = isinstance(exc, OrdersBlocked)
        if blocked:
            delay_s = self._settings.order_blocked_retry_s
            if self._gate is not None:
                await self._gate.blocked(str(exc))
        else:
            base, cap = self._settings.close_retry_base_s, self._settings.close_retry_max_s
            delay_s = min(cap, base * 2.0 ** min(attempt - 1, 30))
        error = str(exc)[:500]
        fields = {"gtt_id": ""} if placing else {}  # a failed place leaves no GTT of ours (or an unknown one)
        await self._net.end(
            position.symbol, state=state, last_error=error, attempts=attempt, next_at=repr(self._clock.now() + delay_s),
            **fields,
        )  # fmt: skip
        logger.warning(
            f"Safety net for {position.symbol} not in place (attempt {attempt}): {error}; the guard keeps protecting "
            f"it, retrying in {delay_s:.1f}s"
        )
        if error != net.last_error:
            await self._store.publish_event("safety_net_failed", position.symbol, error=error, attempt=attempt)

    # --- GTTs that fired while nobody looked ----------------------------------------------------
    async def check_fired(self) -> int:
        """Ask the broker which of our GTTs are no longer waiting; close the positions whose GTT fired (through
        the normal close path) and re-place the ones that ended without an order. Returns how many fired."""
        positions = [(p, n) for p, n in await self._open_positions() if n.gtt_id and n.state == "active"]
        if not positions:
            return 0
        live = await self._net.live_gtts()
        fired = 0
        for position, net in positions:
            listed = live.get(net.gtt_id)
            rules = (listed or {}).get("rules") or []
            if listed and all(r.get("status") in ("SCHEDULED", "PENDING") for r in rules):
                continue
            if await self._not_active(position, net):
                fired += 1
        return fired

    async def _not_active(self, position: Position, net: NetState) -> bool:
        """The GTT is no longer waiting: True (and a close started) when it fired, else it is re-placed."""
        outcome, order = await self._net.inspect(net.gtt_id)
        if outcome == "live":
            return False
        if order is None:
            logger.warning(
                f"{position.symbol}: safety net GTT {net.gtt_id} ended at the broker without an order; re-placing"
            )
            await self._net.end(position.symbol, state="ended")
            self.wake()
            return False
        logger.warning(
            f"{position.symbol}: safety net GTT {net.gtt_id} fired at the broker (order {order.get('order_id')} "
            f"{order.get('status')}); settling it"
        )
        self._close_fired(position)
        return True
