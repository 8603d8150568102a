"""Closing a position: the one implementation the monitor and the emergency API share.

claim (open -> closing, atomic) -> broker order -> closed + journal, or back to open with the error.
Only the claimant sends an order, so a position is closed at most once however many callers race.
"""

from __future__ import annotations

from dataclasses import dataclass

from loguru import logger

from libs.common.broker import Broker, BrokerError, BrokerOutcomeUnknown
from libs.common.clock import Clock
from libs.common.models import CloseReason, CloseRecord, Position, PriceSource
from libs.common.money import Paise
from libs.common.positions import PositionConflict, PositionStore
from libs.common.replication import ClaimConfirmation, ClaimNotConfirmed

TAG_PREFIX = "guard-close-"


def close_tag(claim_id: str) -> str:
    """The order tag that ties a broker order to one close claim (<= 40 chars, as Upstox allows)."""
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


class Closer:
    """Closes positions exactly once through `store`'s claim and `broker`."""

    def __init__(
        self, store: PositionStore, broker: Broker, clock: Clock, *, confirmation: ClaimConfirmation | None = None
    ) -> None:
        self._store = store
        self._broker = broker
        self._clock = clock
        self._confirmation = confirmation  # None: the claim is not confirmed on a replica (tests, one Redis)

    async def close(self, request: CloseRequest, *, retry_at: float | None = None) -> CloseRecord:
        """Close `request.symbol`. Returns the journal record.

        Raises PositionNotFound, PositionConflict (already closing/closed), BrokerOutcomeUnknown (an order may
        have been placed: the position stays closing until `reconcile`) or BrokerError (no order filled: the
        position is back to open with the error recorded; `retry_at` is stored as its next attempt time; this
        includes ClaimNotConfirmed: no Redis replica confirmed the claim, or it got too old, so no order was sent).
        """
        claimed_at = self._clock.monotonic()
        claim_id, position = await self._store.claim(request.symbol, request.reason)
        await self._store.publish_event(
            "closing",
            request.symbol,
            reason=request.reason.value,
            by=request.closed_by,
            claim_id=claim_id,
            decided_at=request.decided_at,
        )
        await self._confirm_claim(request, claim_id, retry_at, claimed_at)
        try:
            fill = await self._broker.close(position, close_tag(claim_id), request.decision_price)
        except BrokerOutcomeUnknown as exc:
            # The order may still fill: keep the claim so no retry sends a second one; reconcile() settles it.
            await self._store.publish_event(
                "close_failed", request.symbol, reason=request.reason.value, by=request.closed_by, error=str(exc),
                outcome="unknown",
            )  # fmt: skip
            raise
        except BrokerError as exc:
            await self._store.release(request.symbol, claim_id, str(exc), retry_at)
            await self._store.publish_event(
                "close_failed", request.symbol, reason=request.reason.value, by=request.closed_by, error=str(exc)
            )
            raise
        except BaseException as exc:
            # Unknown outcome (cancelled, crashed): leave it closing; reconcile() settles it by tag.
            logger.error(f"Close of {request.symbol} interrupted ({type(exc).__name__}); will reconcile")
            raise
        record = self._record(position, request, fill.order_id, fill.price)
        if not await self._store.complete(claim_id, record):
            # Someone settled our claim while the order was in flight (a reconcile that found no order yet).
            # The fill is real; say so loudly rather than report a clean close.
            logger.error(
                f"Close of {request.symbol} filled (order {fill.order_id}) but its claim was settled elsewhere; "
                "check the position and the broker's orders"
            )
            await self._store.publish_event("close_unrecorded", request.symbol, record=record.public())
            raise PositionConflict(request.symbol, "settled elsewhere while its order was in flight")
        await self._store.publish_event("closed", request.symbol, record=record.public())
        return record

    async def _confirm_claim(
        self, request: CloseRequest, claim_id: str, retry_at: float | None, claimed_at: float
    ) -> None:
        """No order leaves on a claim a Redis failover could lose, or another closer may have settled
        (libs/common/replication.py). Right before the order, so nothing slow comes between them."""
        if self._confirmation is None:
            return
        try:
            await self._confirmation.confirm(request.symbol, claimed_at)
        except ClaimNotConfirmed as exc:
            await self._store.release(request.symbol, claim_id, str(exc), retry_at)
            await self._store.publish_event(
                "close_failed", request.symbol, reason=request.reason.value, by=request.closed_by, error=str(exc)
            )
            raise

    def _record(self, position: Position, request: CloseRequest, order_id: str, exit_price: Paise) -> CloseRecord:
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
            closed_by=request.closed_by,
        )

    async def reconcile(self, position: Position) -> CloseRecord | None:
        """Settle a position left in `closing` by a crashed closer: finish it if the broker filled its
        order, otherwise reopen it. Returns the record when it turned out closed. Raises BrokerError.
        """
        if not position.claim_id:
            return None
        fill = await self._broker.find_by_tag(close_tag(position.claim_id))
        if fill is None:
            await self._store.release(
                position.symbol, position.claim_id, "closer stopped before the order was placed; reopened", None
            )
            await self._store.publish_event("reopened", position.symbol, claim_id=position.claim_id)
            return None
        request = CloseRequest(
            symbol=position.symbol,
            reason=position.close_reason or CloseReason.EMERGENCY,
            closed_by="reconcile",
            decision_price=None,
            price_source=PriceSource.BROKER,
            price_age_s=None,
        )
        record = self._record(position, request, fill.order_id, fill.price)
        if await self._store.complete(position.claim_id, record):
            await self._store.publish_event("closed", position.symbol, record=record.public())
            return record
        return None
