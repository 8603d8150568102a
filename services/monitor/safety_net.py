"""The monitor's keeper of Layer 0: GTT stops at the broker for every open position (`libs.common.safety_net`).

Every sweep interval (and at once after a position event) it brings each open position's GTTs in line with
the position: placed when missing (registered, adopted, reopened), modified when the stop-loss or the
quantity moved, re-placed when they expired or were cancelled outside the guard. An F&O position larger than
the freeze quantity gets several GTTs (legs) of whole lots, each at most the freeze quantity, because the
order a GTT places is never sliced. A failed call is retried with backoff (static-IP blocks at
`ORDER_BLOCKED_RETRY_S`), shown on the position and raised as an event; the guard's own layers do not wait for
it. At start and every `RECONCILE_INTERVAL_S` it asks the broker which GTTs fired while nobody looked: those
positions go through the normal close path, whose disarm settles them from the GTTs' orders
(`closed_by: "safety_net"`) or takes over orders a gap left open.

With several monitors, one keeps the nets: the holder of `safety_net:lease` (`SAFETY_NET_LEASE_S`, a fencing
token, `libs.common.feed_lease.Lease`). Every keeper call starts with a fenced mark in the position's hash, so a
keeper that lost the lease (paused, cut off) starts no call; a standby takes over within the lease.
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
from libs.common.backoff import Backoff
from libs.common.broker import BrokerError, BrokerOutcomeUnknown, OrdersBlocked
from libs.common.clock import Clock
from libs.common.feed_lease import Lease
from libs.common.fno import OverLimits
from libs.common.models import MalformedRecord, Position, PositionState
from libs.common.money import Paise, fmt_inr
from libs.common.order_gate import OrderGate
from libs.common.pacing import in_background
from libs.common.positions import PositionStore
from libs.common.safety_net import NetState, SafetyNet, trigger_for
from libs.common.settings import Settings
from services.monitor.snapshot import SLICE

_REPLACE = ("", "cancelled", "ended")  # no GTT can act for the position: place them
_RENEW_BEFORE_S = {"I": 0.0}  # intraday GTTs are re-placed once expired; longer ones a day before their end
_RENEW_DEFAULT_S = 86400.0
# The keeper's calls are spread (at most 5 a second) rather than sent in bursts; the broker client's pacer keeps
# half of every order window (GTTs count among order calls) for closes whatever the keeper does.
_CALL_GAP_S = 0.2
_GONE = ("UDAPI1134", "UDAPI1135")
_STANDING = ("active", "retrying", "refused")  # states in which GTTs of the position may stand at the broker


class _Legs:
    """The GTTs (id, quantity) known to stand for a position during one keeper call, in leg order."""

    def __init__(self, net: NetState, trigger: Paise) -> None:
        self.legs = list(zip(net.ids, net.legs, strict=False))
        self.stale = {i for i, _ in self.legs} if net.trigger != trigger else set()  # ids to modify to `trigger`

    def fields(self) -> dict[str, str]:
        return {"gtt_id": ",".join(i for i, _ in self.legs), "quantity": ",".join(str(q) for _, q in self.legs)}


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
        self._retry = Backoff(settings.close_retry_base_s, settings.close_retry_max_s)  # a failed GTT call
        self._wake = asyncio.Event()
        self._checked_at: float | None = None
        self.lease = Lease(
            redis, clock, key=keys.SAFETY_NET_LEASE, counter=keys.SAFETY_NET_LEASE_COUNTER,
            lease_s=settings.safety_net_lease_s, instance=settings.instance_name,
        )  # fmt: skip
        self._renewed_at = 0.0

    def wake(self) -> None:
        """Look at the positions now (one was opened, moved or reopened)."""
        self._wake.set()

    @property
    def keeping(self) -> bool:
        """True while this monitor holds the keeper lease."""
        return bool(self.lease.token)

    async def recover(self) -> int:
        """On taking the lease: a broker call marked in flight belongs to a keeper that is gone (the lease was
        free), so its outcome is unknown and settled from what the broker lists. Returns how many were marked."""
        symbols = await self._store.open_symbols()  # open or closing
        marked = 0
        for symbol, net in (await self._net.states(symbols)).items():
            if net.busy_since is not None:
                await self._net.end(symbol, state="unknown")
                marked += 1
        return marked

    async def hold(self) -> bool:
        """Take or renew the keeper lease (renewed every third of it); True while this monitor keeps the nets.
        Its calls are fenced besides (`SafetyNet.begin`), so a keeper that lost the lease starts none."""
        now = self._clock.monotonic()
        if self.lease.token:
            if now - self._renewed_at < self.lease.lease_s / 3:
                return True
            if not await self.lease.renew():  # another monitor holds it (this one paused or was cut off)
                self._step_down()
                return False
            self._renewed_at = now
            return True
        if not await self.lease.acquire():
            return False
        self._renewed_at = now
        logger.success(
            f"Safety-net keeper: instance {self.lease.instance} keeps the safety nets "
            f"(fencing token {self.lease.token.partition(':')[0]})"
        )
        await self.recover()
        self._checked_at = None  # look at once for GTTs that fired while no keeper looked
        return True

    def _step_down(self) -> None:
        self.lease.step_down()
        logger.warning(f"Safety-net keeper: instance {self.lease.instance} lost the keeper lease; standing by")

    async def run(self) -> None:
        try:
            with in_background():  # the keeper's GTT calls leave half of each order window to closes
                await self._keep()
        finally:
            with contextlib.suppress(RedisError, OSError):  # a clean stop hands the nets over at once
                await asyncio.shield(self.lease.release())

    async def _keep(self) -> None:
        while True:
            self._wake.clear()
            try:
                if await self.hold():
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
        """Every open position with its net, read and parsed `SLICE` at a time: the event loop (and the tick path
        on it) runs between slices, where one pass over 10,000 records held it for hundreds of ms."""
        symbols = await self._store.open_symbols()
        out = []
        for start in range(0, len(symbols), SLICE):
            if start:
                await asyncio.sleep(0)
            async with self._redis.pipeline(transaction=False) as pipe:
                for symbol in symbols[start : start + SLICE]:
                    pipe.hgetall(keys.position(symbol))
                rows = cast(list[dict[str, str]], await pipe.execute())
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
        """One pass over the open positions; returns how many keeper calls it made."""
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
            try:
                wanted = self._net.legs(position)
            except OverLimits as exc:
                await self._refused(position, net, str(exc))
                continue
            action = self._action(position, net, trigger, wanted, now)
            if action is None:
                continue
            if calls:
                await asyncio.sleep(_CALL_GAP_S)
            if not await self.hold():
                return calls
            answer = await self._net.begin(position.symbol, trigger, (self.lease.key, self.lease.token))
            if answer == "fenced":
                self._step_down()
                return calls
            if answer != "ok":
                continue
            calls += 1
            await self._call(action, position, net, trigger, wanted)
        return calls

    def _action(self, position: Position, net: NetState, trigger: Paise, wanted: list[int], now: float) -> str | None:
        if net.state == "unknown":
            return "settle"
        if not net.ids or net.state in _REPLACE:
            return "place"
        if net.expires_at is not None:
            renew_s = _RENEW_BEFORE_S.get(self._settings.order_product, _RENEW_DEFAULT_S)
            if now >= net.expires_at - renew_s:
                return "renew"
        if net.trigger != trigger or list(net.legs) != wanted or len(net.ids) != len(net.legs):
            return "align"
        return None

    async def _call(self, action: str, position: Position, net: NetState, trigger: Paise, wanted: list[int]) -> None:
        symbol = position.symbol
        legs = _Legs(NetState() if action == "place" else net, trigger)
        try:
            found = []
            if action == "settle":  # a call had no clear answer: adopt what it placed, never place blindly again
                found = await self._net.find_strays(position, net.intent or trigger, net.ids)
                legs.legs += found
                if (net.intent or trigger) != trigger:
                    legs.stale.update(gtt_id for gtt_id, _ in found)
            if action == "renew":
                for gtt_id, _ in legs.legs:
                    if not await self._net.cancel(gtt_id) and (await self._net.inspect(gtt_id))[0] != "ended":
                        await self._net.end(symbol)  # the call is over; what became of the GTTs decides the rest
                        await self._not_active(position, net)
                        return
                logger.info(f"{symbol}: safety net GTT {net.gtt_id} expires; placing a new one")
                legs.legs = []
            how = await self._align(position, legs, trigger, wanted)
            if found and how == "modified":
                how = "found at the broker after an unanswered call"
            if how is None:
                await self._net.end(symbol)
                await self._not_active(position, net)
                return
            await self._placed(position, legs, trigger, how)
        except BrokerOutcomeUnknown as exc:
            # The broker may have acted: settle from what it lists next round, never place blindly again.
            await self._failed(position, net, legs, exc, state="unknown")
        except BrokerError as exc:
            await self._failed(position, net, legs, exc, state="retrying")
        except BaseException:
            with contextlib.suppress(RedisError):
                await self._net.end(symbol, state="unknown", **legs.fields())
            raise

    async def _align(self, position: Position, legs: _Legs, trigger: Paise, wanted: list[int]) -> str | None:
        """Make the standing legs match `wanted` at `trigger`: modify the ones that differ, place the missing ones,
        cancel the extra ones; `legs` follows every step. Returns how (for the log), or None when a GTT turned
        out no longer active (fired, cancelled or expired: the caller finds out which). Stops placing when the
        position stops being open (a closer claimed it: the caller cancels what stands)."""
        have, placed, modified = list(legs.legs), 0, 0
        for n, quantity in enumerate(wanted):
            call = n >= len(have) or have[n][1] != quantity or have[n][0] in legs.stale
            if call and (placed or modified):
                await asyncio.sleep(_CALL_GAP_S)
            if call and n and await self._net.going_on(position.symbol) != "ok":
                break
            if n < len(have):
                gtt_id, _ = have[n]
                if call:
                    try:
                        await self._net.modify(gtt_id, position, quantity, trigger)
                    except BrokerError as exc:
                        if not any(code in str(exc) for code in _GONE):
                            raise
                        return None
                    legs.legs[n] = (gtt_id, quantity)
                    legs.stale.discard(gtt_id)
                    modified += 1
                continue
            legs.legs.append((await self._net.place(position, quantity, trigger), quantity))
            placed += 1
        for gtt_id, _ in have[len(wanted) :]:  # fewer legs now (the position was reduced)
            if not await self._net.cancel(gtt_id):
                return None
            legs.legs.remove(next(leg for leg in legs.legs if leg[0] == gtt_id))
        return "placed" if placed else "modified"

    async def _placed(self, position: Position, legs: _Legs, trigger: Paise, how: str) -> None:
        symbol = position.symbol
        ids = [gtt_id for gtt_id, _ in legs.legs]
        state = await self._net.end(
            symbol, state="active", trigger=f"{trigger / 100:.2f}", expires_at="", last_error="", attempts=0,
            next_at="", order_id="", **legs.fields(),
        )  # fmt: skip
        if self._gate is not None:
            await self._gate.accepted()
        if state == "open":  # when it lapses, read after the call is over so no closer waits for it
            await self._net.end(symbol, expires_at=await self._expiry(ids))
        if state != "open":  # closed or removed while the call was out: these GTTs must not outlive it
            logger.warning(f"{symbol}: {state} while its safety net was being {how}; cancelling GTT {','.join(ids)}")
            with contextlib.suppress(BrokerError):
                if all([await self._net.cancel(gtt_id) for gtt_id in ids]):
                    await self._net.end(symbol, state="cancelled")
            return
        side = "below" if trigger < (position.stop_loss or 0) else "above"
        quantities = " + ".join(str(q) for _, q in legs.legs)
        logger.info(
            f"{symbol}: safety net {how} at the broker: GTT {', '.join(ids)}, {quantities} at {fmt_inr(trigger)} "
            f"({side} the stop-loss {fmt_inr(position.stop_loss or Paise(0))})"
        )
        await self._store.publish_event(
            "safety_net_placed", symbol, gtt_id=ids[0] if ids else None, gtt_ids=ids, trigger_price=trigger / 100,
            how=how,
        )  # fmt: skip

    async def _expiry(self, ids: list[str]) -> str:
        """When the first of the legs lapses (epoch s), '' when the broker does not say."""
        with contextlib.suppress(BrokerError, KeyError, TypeError, ValueError):
            listed = await self._net.live_gtts()
            return repr(min(int(listed[gtt_id]["expires_at"]) for gtt_id in ids) / 1_000_000)
        return ""

    async def _failed(self, position: Position, net: NetState, legs: _Legs, exc: BrokerError, *, state: str) -> None:
        attempt = net.attempts + 1
        blocked = isinstance(exc, OrdersBlocked)
        if blocked:
            delay_s = self._settings.order_blocked_retry_s
            if self._gate is not None:
                await self._gate.blocked(str(exc))
        else:
            delay_s = self._retry.compute(attempt)
        await self._net.end(
            position.symbol, state=state, last_error=str(exc)[:500], attempts=attempt,
            next_at=repr(self._clock.now() + delay_s), trigger="", **legs.fields(),
        )  # fmt: skip
        await self._not_in_place(position, net, str(exc)[:500], attempt, delay_s)

    async def _refused(self, position: Position, net: NetState, reason: str) -> None:
        """The position cannot be protected by GTTs within the exchange's limits: said once, looked at again
        after the longest retry delay (the quantity may change); GTTs already standing stay."""
        error = f"no safety net: {reason}"
        delay_s = self._settings.close_retry_max_s
        await self._net.end(
            position.symbol, state="refused", last_error=error, attempts=net.attempts + 1,
            next_at=repr(self._clock.now() + delay_s),
        )  # fmt: skip
        await self._not_in_place(position, net, error, net.attempts + 1, delay_s)

    async def _not_in_place(self, position: Position, net: NetState, error: str, attempt: int, delay_s: float) -> None:
        logger.warning(
            f"Safety net for {position.symbol} not in place (attempt {attempt}): {error}; the guard keeps protecting "
            f"it, retrying in {delay_s:.1f}s"
        )
        if error != net.last_error:
            await self._store.publish_event("safety_net_failed", position.symbol, error=error, attempt=attempt)

    # --- GTTs that fired while nobody looked ----------------------------------------------------
    async def check_fired(self) -> int:
        """Ask the broker which of our GTTs are no longer waiting; close the positions where one fired (through
        the normal close path) and re-place the ones that ended without an order. Returns how many fired."""
        positions = [(p, n) for p, n in await self._open_positions() if n.ids and n.state in _STANDING]
        if not positions:
            return 0
        live = await self._net.live_gtts()
        fired = 0
        for position, net in positions:
            if all(_waiting(live.get(gtt_id)) for gtt_id in net.ids):
                continue
            if await self._not_active(position, net):
                fired += 1
        return fired

    async def _not_active(self, position: Position, net: NetState) -> bool:
        """Some GTT is no longer waiting: True (and a close started) when one fired, else the ones that ended
        are dropped from the legs and the keeper places them again."""
        standing = []
        for gtt_id, quantity in zip(net.ids, net.legs, strict=False):
            outcome, order = await self._net.inspect(gtt_id)
            if outcome == "live":
                standing.append((gtt_id, quantity))
            elif order is not None:
                logger.warning(
                    f"{position.symbol}: safety net GTT {gtt_id} fired at the broker (order {order.get('order_id')} "
                    f"{order.get('status')}); settling it"
                )
                self._close_fired(position)
                return True
            else:
                logger.warning(
                    f"{position.symbol}: safety net GTT {gtt_id} ended at the broker without an order; re-placing"
                )
        if len(standing) == len(net.ids):
            return False
        remaining = _Legs(NetState(), Paise(0))
        remaining.legs = standing
        await self._net.end(position.symbol, state="active" if standing else "ended", **remaining.fields())
        self.wake()
        return False


def _waiting(gtt: dict[str, object] | None) -> bool:
    rules = cast(list[dict[str, object]], (gtt or {}).get("rules") or [])
    return bool(gtt) and all(r.get("status") in ("SCHEDULED", "PENDING") for r in rules)
