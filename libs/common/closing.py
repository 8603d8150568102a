"""Closing a position: the one implementation the monitor, the emergency API and the reconcile share.

claim (open -> closing, atomic) -> read what the broker holds -> fence -> order(s) -> closed + journal, or
back to open with the error. Only the claimant sends orders, so a position is closed at most once however
many callers race, and never for more than the broker holds:

- before every order the broker's net position caps the quantity (flat: no order, closed as `external`);
- a partial fill is followed by an order for the remainder within the same claim and close tag;
- a 5xx or timeout after the order was sent is settled by the close tag, never by a second order;
- a closer whose claim is no longer its own, or older than half of `MONITOR_STUCK_CLOSE_S` (the reconcile
  may have taken it over), sends nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from loguru import logger

from libs.common.broker import Broker, BrokerError, BrokerOutcomeUnknown, Fill, OrdersBlocked, sending_before
from libs.common.broker_positions import BrokerPositions, PositionsUnavailable
from libs.common.clock import Clock
from libs.common.metrics import CLOSE_FAILURES, observe_close
from libs.common.models import CloseReason, CloseRecord, Position, PriceSource
from libs.common.money import Paise
from libs.common.order_gate import OrderGate
from libs.common.pacing import in_background
from libs.common.positions import ClaimHolder, PositionConflict, PositionStore, new_claim_id
from libs.common.replication import ClaimConfirmation, ClaimNotConfirmed
from libs.common.safety_net import Fired, SafetyNet
from libs.common.service import cancel_and_wait
from libs.common.settings import Settings

TAG_PREFIX = "guard-close-"
MAX_ORDERS_PER_CLAIM = 4
_SETTLE_DELAYS_S = (0.1, 0.3, 0.6)


def close_tag(claim_id: str) -> str:
    """The order tag that ties broker orders to one close claim (<= 40 chars, as Upstox allows)."""
    return TAG_PREFIX + claim_id


@dataclass(frozen=True, slots=True)
class CloseRequest:
    """What decided the close and on which price."""

    symbol: str
    reason: CloseReason
    closed_by: str  # "monitor" or "api"
    decision_price: Paise | None  # the price the decision used (None: no usable cached price)
    price_source: PriceSource
    price_age_s: float | None
    decided_at: float | None = None  # epoch s the decision was taken (the trigger log line), for latency


class ClaimFenced(PositionConflict):
    """This closer's claim is no longer its own, or too old to act on: it sent nothing."""


class PartialClose(BrokerError):
    """Part of the position was sold, the rest could not be: the position is open again for the remainder."""


@dataclass(frozen=True, slots=True)
class _Limits:
    product: str
    fence_after_s: float
    blocked_retry_s: float


class Closer:
    """Closes positions exactly once through `store`'s claim and `broker`, capped by what the broker holds."""

    def __init__(
        self,
        store: PositionStore,
        broker: Broker,
        clock: Clock,
        *,
        holdings: BrokerPositions | None = None,
        gate: OrderGate | None = None,
        settings: Settings | None = None,
        safety_net: SafetyNet | None = None,
        confirmation: ClaimConfirmation | None = None,
    ) -> None:
        self._store = store
        self._broker = broker
        self._clock = clock
        self._holdings = holdings
        self._gate = gate
        self._safety_net = safety_net
        self._confirmation = confirmation  # None: the claim is not confirmed on a replica (tests, one Redis)
        s = settings or Settings()
        self._limits = _Limits(s.order_product, s.monitor_stuck_close_s / 2, s.order_blocked_retry_s)
        self._background: set[asyncio.Task[None]] = set()
        self._notices: dict[str, asyncio.Task[None]] = {}  # claim id -> its "closing" event, still going out

    async def close(self, request: CloseRequest, *, retry_at: float | None = None) -> CloseRecord:
        """Close `request.symbol`. Returns the journal record (`closed_by` "external" when the broker was flat).

        Raises PositionNotFound, PositionConflict (already closing/closed; ClaimFenced: this claim was taken
        over, nothing sent), BrokerOutcomeUnknown (an order may have been placed: the position stays closing
        until `reconcile`; `claim_id` is set), OrdersBlocked (static IP; retried after ORDER_BLOCKED_RETRY_S),
        PartialClose (part sold, open again for the rest) or BrokerError (nothing filled: the position is back
        to open with the error recorded; `retry_at` is stored as its next attempt time).
        """
        claim_id, position = await self._store.claim(request.symbol, request.reason, new_claim_id())
        # The event never stands between the claim and the order: it goes out on the side.
        closing = self._store.publish_event(
            "closing", request.symbol, reason=request.reason.value, by=request.closed_by, claim_id=claim_id,
            decided_at=request.decided_at, rev=position.rev,
        )  # fmt: skip
        self._notices[claim_id] = self._on_the_side(closing)
        try:
            with in_background(False):  # a close's broker calls go first, whoever started it
                return await self._sell(position, claim_id, request, retry_at)
        except BrokerOutcomeUnknown as exc:
            # The order may still fill: keep the claim so no retry sends a second one; reconcile() settles it.
            exc.claim_id = claim_id
            CLOSE_FAILURES.labels(kind="unknown").inc()
            await self._failed(request, claim_id, exc, outcome="unknown")
            raise
        except ClaimFenced:
            raise
        except BrokerError as exc:
            CLOSE_FAILURES.labels(kind="blocked" if isinstance(exc, OrdersBlocked) else "rejected").inc()
            await self._failed(request, claim_id, exc)
            raise
        except BaseException as exc:
            # Unknown outcome (cancelled, crashed): leave it closing; reconcile() settles it by tag.
            logger.error(f"Close of {request.symbol} interrupted ({type(exc).__name__}); will reconcile")
            raise
        finally:
            self._notices.pop(claim_id, None)

    async def _sell(
        self, position: Position, claim_id: str, request: CloseRequest, retry_at: float | None
    ) -> CloseRecord:
        fired: Fired | None = None  # the broker's stop, when some of its GTTs fired
        held_at_first: asyncio.Task[int | None] | None = None
        if self._safety_net is not None:  # Layer 0 first, so the broker's stop cannot sell too
            # The broker's position is read while the net is disarmed (one round trip fewer before the order).
            # Safe: a GTT that fires meanwhile is in `by_net`, so `guarded` already excludes what it sold, and the
            # order is the smaller of `guarded` and what the broker held; no order goes out before both are known.
            held_at_first = asyncio.ensure_future(self._held(position))
            try:
                settled = await self._disarm_safety_net(self._safety_net, position, claim_id, request, retry_at)
            except BaseException:
                await cancel_and_wait([held_at_first])
                raise
            if isinstance(settled, CloseRecord):
                await cancel_and_wait([held_at_first])
                return settled
            fired = settled
        by_net = [fired.fill] if fired is not None and fired.fill is not None else []  # what those GTTs sold
        guarded = position.quantity - sum(f.quantity or 0 for f in by_net)
        tag = close_tag(claim_id)
        fills: list[Fill] = []
        sold = 0
        while len(fills) < MAX_ORDERS_PER_CLAIM:
            held = await held_at_first if held_at_first is not None and not fills else await self._held(position)
            want = guarded - sold if held is None else min(guarded - sold, held)
            if want <= 0:
                break
            # The claim is confirmed once, before its first order, with the claim holder read after it for the
            # fence, whose age check then covers the WAIT too.
            confirmed = await self._confirm_claim(request, claim_id, retry_at) if not fills else None
            left_s = await self._fence(position.symbol, claim_id, confirmed)
            try:
                part = position.model_copy(update={"quantity": want})
                with sending_before(time.monotonic() + left_s):
                    fill = await self._broker.close(part, tag, request.decision_price)
            except BrokerOutcomeUnknown as exc:
                fill = await self._settle_unknown(tag, fills, str(exc))
            except OrdersBlocked as exc:
                if self._gate is not None:
                    await self._gate.blocked(str(exc))
                if not fills:
                    blocked_retry = self._clock.now() + self._limits.blocked_retry_s
                    await self._store.release(position.symbol, claim_id, str(exc), blocked_retry)
                    raise
                break
            except BrokerError as exc:
                if not fills:
                    await self._store.release(position.symbol, claim_id, str(exc), retry_at)
                    raise
                logger.error(f"Follow-up order for {position.symbol} failed: {exc}")
                break
            if self._gate is not None:
                self._on_the_side(self._gate.accepted())
            fills.append(fill)
            got = fill.quantity or want
            sold += got
            if got < want:
                logger.warning(
                    f"{position.symbol}: order {fill.order_id} filled {got} of {want}; the remainder follows "
                    "in the same claim"
                )
                continue
            break
        if not fills and by_net:  # the broker is flat after what the safety net's orders sold
            return await self._settled_by_net(position, claim_id, request, by_net)
        if not fills:
            return await self._finish_external(position, claim_id, request)
        still_held = await self._held(position) if sold < guarded else 0
        if still_held != 0:
            left = guarded - sold if still_held is None else min(guarded - sold, still_held)
            error = f"sold {sold} of {guarded}; {left} still held and guarded"
            record = self._exit_record(position, request, by_net + fills, request.closed_by, remaining=left)
            # The fired net's fills are in this record and out of `left`: the same step marks it disarmed, so no
            # later disarm counts them again (that would journal them twice and take the rest for sold).
            spent = "" if fired is None else fired.gtt_id
            rev = await self._store.release(
                position.symbol, claim_id, error, retry_at, quantity=left, sold=record, net_spent=spent
            )
            await self._publish(
                "reduced", position.symbol, claim_id, quantity=left, sold=sold, part=record.public(), rev=rev
            )
            raise PartialClose(f"{position.symbol}: {error}")
        return await self._finish(position, claim_id, request, by_net + fills, request.closed_by)

    async def _held(self, position: Position) -> int | None:
        """Units the broker holds in the position's direction; None when it cannot say (or keeps no positions)."""
        if self._holdings is None:
            return None
        try:
            snapshot = await self._holdings.read()
        except PositionsUnavailable as exc:
            logger.warning(f"{position.symbol}: {exc}; going on with the guarded quantity {position.quantity}")
            return None
        if snapshot is None:
            return None
        return snapshot.held(position.instrument_key, self._limits.product, position.side)

    async def _fence(self, symbol: str, claim_id: str, read: ClaimHolder | None) -> float:
        """Seconds this closer may still send an order on its claim; raises ClaimFenced when none. `read`: the
        claim holder just read (with the confirmation), else it is read now."""
        state, holder, claimed_at = read or await self._store.claim_holder(symbol)
        if state != "closing" or holder != claim_id:
            logger.error(f"Close of {symbol}: its claim was taken over while this closer waited; no order sent")
            raise ClaimFenced(symbol, "settled elsewhere (this closer's claim was taken over)")
        age_s = None if claimed_at is None else self._clock.now() - claimed_at
        if age_s is None or age_s > self._limits.fence_after_s:
            logger.error(
                f"Close of {symbol}: claim is {age_s or 0:.1f}s old (limit {self._limits.fence_after_s:g}s); "
                "no order sent, the reconcile settles it"
            )
            raise ClaimFenced(symbol, "closing (claim too old to act on; being reconciled)")
        return self._limits.fence_after_s - age_s

    async def _settle_unknown(self, tag: str, fills: list[Fill], cause: str) -> Fill:
        """The fill of the order whose place call had no clear answer, found by its tag; raises
        BrokerOutcomeUnknown when the broker cannot show one yet (the reconcile settles it later)."""
        before_qty = sum(f.quantity or 0 for f in fills)
        before_value = sum((f.quantity or 0) * f.price for f in fills)
        for delay_s in _SETTLE_DELAYS_S:
            await asyncio.sleep(delay_s)
            try:
                total = await self._broker.find_by_tag(tag)
            except BrokerError:
                continue
            got = (total.quantity or 0) - before_qty if total else 0
            if total is not None and got > 0:
                price = Paise(round(((total.quantity or 0) * total.price - before_value) / got))
                logger.warning(f"Order with tag {tag} had no clear answer; the broker shows it filled {got}")
                return Fill(order_id=total.order_id.split(",")[-1], price=price, quantity=got)
        raise BrokerOutcomeUnknown(f"order with tag {tag} had no clear answer ({cause}); no fill shows yet")

    async def _finish(
        self, position: Position, claim_id: str, request: CloseRequest, fills: list[Fill], closed_by: str
    ) -> CloseRecord:
        record = self._exit_record(position, request, fills, closed_by)
        await self._complete(position.symbol, claim_id, record, request.decided_at)
        return record

    def _exit_record(
        self, position: Position, request: CloseRequest, fills: list[Fill], closed_by: str, remaining: int = 0
    ) -> CloseRecord:
        """The journal record of what `fills` sold, at their average price (`remaining`: units still guarded)."""
        quantity = sum(f.quantity or position.quantity for f in fills)
        price = Paise(round(sum((f.quantity or position.quantity) * f.price for f in fills) / quantity))
        sold = position.model_copy(update={"quantity": quantity})
        record = self._record(sold, request, ",".join(f.order_id for f in fills), price, closed_by)
        return record.model_copy(update={"remaining": remaining}) if remaining else record

    async def _confirm_claim(self, request: CloseRequest, claim_id: str, retry_at: float | None) -> ClaimHolder | None:
        """No order leaves on a claim a Redis failover could lose (libs/common/replication.py). Before the
        fence, so the fence's age check covers the time WAIT took: returns the claim holder read after the
        confirmation, for the fence (None: no confirmation, the fence reads it)."""
        if self._confirmation is None:
            return None
        try:
            return await self._confirmation.confirm(request.symbol)
        except ClaimNotConfirmed as exc:
            await self._store.release(request.symbol, claim_id, str(exc), retry_at)
            raise

    async def _finish_external(self, position: Position, claim_id: str, request: CloseRequest) -> CloseRecord:
        """The broker holds nothing of it: closed outside the guard (the app, the bot, auto square-off), unless
        our own safety net did it."""
        if self._safety_net is not None:
            settled = await self._disarm_safety_net(self._safety_net, position, claim_id, request, None)
            if isinstance(settled, CloseRecord):
                return settled
            if settled is not None and settled.fill is not None:
                return await self._settled_by_net(position, claim_id, request, [settled.fill])
        exit_price = request.decision_price or position.entry_price
        record = self._record(position, request, "", exit_price, "external")
        rev = await self._store.complete(claim_id, record)
        if not rev:
            raise ClaimFenced(position.symbol, "settled elsewhere (this closer's claim was taken over)")
        logger.warning(
            f"{position.symbol}: the broker holds none of this {position.side} position (closed outside the "
            "guard); no order sent, marked closed (external)"
        )
        observe_close(record.reason, record.closed_by, record.price_source, request.decided_at, record.closed_at)
        await self._publish("closed", position.symbol, claim_id, record=record.public(), rev=rev)
        return record

    async def _disarm_safety_net(
        self, net: SafetyNet, position: Position, claim_id: str, request: CloseRequest, retry_at: float | None
    ) -> CloseRecord | Fired | None:
        """Cancel the position's GTTs; if they already fired and their orders filled the position, that is the
        close (`closed_by` "safety_net"); else the GTTs that fired, if any (the guard sells at most the rest). When a
        GTT cannot be made harmless, release the claim and raise: no order may go out beside a stop that can
        still fire."""
        await self._still_ours(position.symbol, claim_id)  # a stale closer must not touch a reopened position's GTT
        try:
            fired = await net.disarm(position)
        except BrokerError as exc:
            blocked = isinstance(exc, OrdersBlocked)
            if blocked and self._gate is not None:
                await self._gate.blocked(str(exc))
            when = self._clock.now() + self._limits.blocked_retry_s if blocked else retry_at
            error = f"safety net not disarmed, nothing sent: {exc}"
            await self._store.release(position.symbol, claim_id, error, when)
            raise (OrdersBlocked(error) if blocked else BrokerError(error, status_code=503)) from None
        await self._still_ours(position.symbol, claim_id)  # it may have waited long on the broker
        if fired is None or fired.fill is None or not fired.complete:
            return fired
        return await self._settled_by_net(position, claim_id, request, [fired.fill])

    async def _settled_by_net(
        self, position: Position, claim_id: str, request: CloseRequest, by_net: list[Fill]
    ) -> CloseRecord:
        """Some of the safety net's GTTs sold and the broker holds nothing more: their fills are the close."""
        record = await self._finish(position, claim_id, request, by_net, "safety_net")
        SafetyNet.announce(record)
        return record

    async def _still_ours(self, symbol: str, claim_id: str) -> None:
        state, holder, _ = await self._store.claim_holder(symbol)
        if state != "closing" or holder != claim_id:
            raise ClaimFenced(symbol, "settled elsewhere (this closer's claim was taken over)")

    async def _complete(self, symbol: str, claim_id: str, record: CloseRecord, decided_at: float | None) -> None:
        rev = await self._store.complete(claim_id, record)
        if not rev:
            # Someone settled our claim while the order was in flight. The fill is real; say so loudly.
            logger.error(
                f"Close of {symbol} filled (order {record.order_id}) but its claim was settled elsewhere; "
                "check the position and the broker's orders"
            )
            await self._publish("close_unrecorded", symbol, claim_id, record=record.public())
            raise PositionConflict(symbol, "settled elsewhere while its order was in flight")
        observe_close(record.reason, record.closed_by, record.price_source, decided_at, record.closed_at)
        await self._publish("closed", symbol, claim_id, record=record.public(), rev=rev)

    async def _failed(self, request: CloseRequest, claim_id: str, exc: BrokerError, outcome: str = "failed") -> None:
        await self._publish(
            "close_failed", request.symbol, claim_id, reason=request.reason.value, by=request.closed_by,
            error=str(exc), outcome=outcome,
        )  # fmt: skip

    def _on_the_side(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._side_done)
        return task

    async def _publish(self, kind: str, symbol: str, claim_id: str, **data: Any) -> None:
        """Publish an event of a claim after its "closing" event, so readers see them in order."""
        notice = self._notices.pop(claim_id, None)
        if notice is not None:
            await asyncio.wait({notice})
        await self._store.publish_event(kind, symbol, **data)

    def _side_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning(f"A closing notice was not published: {task.exception()!r}")

    def _record(
        self, position: Position, request: CloseRequest, order_id: str, exit_price: Paise, closed_by: str
    ) -> CloseRecord:
        return CloseRecord(
            symbol=position.symbol,
            instrument_key=position.instrument_key,
            side=position.side,
            quantity=position.quantity,
            entry_price=position.entry_price,
            exit_price=exit_price,
            pnl=position.pnl(exit_price),
            reason=request.reason,
            closed_at=self._clock.now(),
            order_id=order_id,
            price_source=request.price_source,
            price_age_s=request.price_age_s,
            closed_by=closed_by,
        )

    async def close_external(self, symbol: str, reason: CloseReason = CloseReason.EMERGENCY) -> CloseRecord:
        """Mark an open position closed outside the guard (the broker is flat): claim, journal, no order.
        Raises PositionNotFound or PositionConflict."""
        claim_id, position = await self._store.claim(symbol, reason, new_claim_id())
        request = CloseRequest(symbol, reason, "reconcile", None, PriceSource.BROKER, None)
        with in_background(False):
            return await self._finish_external(position, claim_id, request)

    async def reconcile(self, position: Position) -> CloseRecord | None:
        """Settle a position left in `closing` by a stopped closer, from the broker: its close tag's fills and
        what is still held. Finished when filled (or the broker is flat), reopened for what is still held
        otherwise. Returns the record when it turned out closed. Raises BrokerError (e.g. an order of the tag
        still working: try again later)."""
        if not position.claim_id:
            return None
        fill = await self._broker.find_by_tag(close_tag(position.claim_id))
        held = await self._held(position)
        request = CloseRequest(
            symbol=position.symbol,
            reason=position.close_reason or CloseReason.EMERGENCY,
            closed_by="reconcile",
            decision_price=None,
            price_source=PriceSource.BROKER,
            price_age_s=None,
        )
        sold = 0 if fill is None else fill.quantity or position.quantity
        if fill is not None and (sold >= position.quantity or held == 0):
            try:
                return await self._finish(position, position.claim_id, request, [fill], "reconcile")
            except PositionConflict:
                return None
        if fill is None and held == 0:
            try:
                return await self._finish_external(position, position.claim_id, request)
            except PositionConflict:
                return None
        left = position.quantity - sold
        if held is not None:
            left = min(left, held)
        note = "no order of its close tag filled at the broker; reopened" if fill is None else f"sold {sold}; reopened"
        part = None if fill is None else self._exit_record(position, request, [fill], "reconcile", remaining=left)
        rev = await self._store.release(position.symbol, position.claim_id, note, None, quantity=left, sold=part)
        if rev:
            sold_part = {} if part is None else {"part": part.public()}
            await self._store.publish_event(
                "reopened", position.symbol, claim_id=position.claim_id, quantity=left, rev=rev, **sold_part
            )
        return None
