"""The emergency close: pick the decision price the guide's layers allow, then the one shared close path."""

from __future__ import annotations

from loguru import logger

from libs.common import keys
from libs.common.clock import ist_iso
from libs.common.closing import CloseRequest
from libs.common.freshness import TRUTH_FIELDS, FreshnessPolicy, feed_liveness_of
from libs.common.models import CloseReason, MalformedRecord, PriceSource
from libs.common.money import Paise, fmt_inr, rupees
from libs.common.price_cache import truth_of
from services.api.deps import Resources
from services.api.schemas import EmergencyCloseResponse


async def decision_price(res: Resources, symbol: str) -> tuple[Paise | None, PriceSource, float | None]:
    """(price, source, age_s) by the freshness policy; (None, BROKER, None) when expired: the broker's fill decides.

    The price and the feed's liveness are read in one round trip (reads only, nothing depends on their order)."""
    async with res.redis.pipeline(transaction=False) as pipe:
        pipe.hmget(keys.price(symbol), TRUTH_FIELDS)
        pipe.hgetall(keys.FEED_STATUS)
        pipe.get(keys.heartbeat("feed"))
        row, status, beat = await pipe.execute()
    truth = truth_of(symbol, row)
    if isinstance(truth, MalformedRecord):
        logger.warning(f"Ignoring corrupt cached price of {symbol}: {truth}")
        truth = None
    now = res.clock.now()
    policy = FreshnessPolicy.from_settings(res.settings)
    freshness = policy.judge(truth, now, feed_liveness_of(policy, status, beat, now))
    if truth is None or freshness.source is None:
        return None, PriceSource.BROKER, None
    return truth.ltp, freshness.source, freshness.age_s


async def emergency_close(res: Resources, symbol: str, reason: CloseReason) -> EmergencyCloseResponse:
    """Close `symbol` through the shared Closer. Raises PositionNotFound, PositionConflict or BrokerError."""
    price, source, age_s = await decision_price(res, symbol)
    request = CloseRequest(symbol, reason, "api", price, source, age_s, decided_at=res.clock.now())
    record = await res.closer.close(request)
    message = f"Position {record.symbol} closed successfully"
    if record.closed_by == "external":
        message += " (the broker already held none: closed outside the guard, no order sent)"
    else:
        logger.success(
            f"{message}: exit {fmt_inr(record.exit_price)}, P&L {fmt_inr(record.pnl)} "
            f"(emergency API, {reason.value}, order {record.order_id})"
        )
    return EmergencyCloseResponse(
        status="success",
        symbol=record.symbol,
        entry_price=rupees(record.entry_price),
        exit_price=rupees(record.exit_price),
        pnl=rupees(record.pnl),
        reason=record.reason,
        message=message,
        quantity=record.quantity,
        side=record.side,
        order_id=record.order_id,
        price_age_seconds=None if age_s is None else round(age_s, 3),
        price_source=source,
        closed_at=ist_iso(record.closed_at),
        closed_by=record.closed_by,
    )
