"""The emergency close: pick the decision price the guide's layers allow, then the one shared close path."""

from __future__ import annotations

from typing import cast

from loguru import logger

from libs.common import keys
from libs.common.clock import ist_iso
from libs.common.closing import CloseRequest
from libs.common.models import CloseReason, FeedStatus, MalformedRecord, PriceSource
from libs.common.money import Paise, fmt_inr, rupees
from services.api.deps import Resources
from services.api.schemas import EmergencyCloseResponse


async def decision_price(res: Resources, symbol: str) -> tuple[Paise | None, PriceSource, float | None]:
    """(price, source, age_s) from the cache: live/cached/stale by feed state and age; broker when none."""
    try:
        entry = await res.cache.read_one(symbol)
    except MalformedRecord as exc:
        logger.warning(f"Ignoring corrupt cached price of {symbol}: {exc}")
        entry = None
    if entry is None:
        return None, PriceSource.BROKER, None
    age_s = entry.age_s(res.clock.now())
    if age_s >= res.settings.price_cache_ttl_s:
        return None, PriceSource.BROKER, None
    if age_s >= res.settings.price_stale_after_s:
        return entry.ltp, PriceSource.STALE, age_s
    try:
        feed = FeedStatus.from_redis(cast(dict[str, str], await res.redis.hgetall(keys.FEED_STATUS)))
    except MalformedRecord:
        feed = FeedStatus()
    return entry.ltp, PriceSource.LIVE if feed.connected else PriceSource.CACHED, age_s


async def emergency_close(res: Resources, symbol: str, reason: CloseReason) -> EmergencyCloseResponse:
    """Close `symbol` through the shared Closer. Raises PositionNotFound, PositionConflict or BrokerError."""
    price, source, age_s = await decision_price(res, symbol)
    request = CloseRequest(symbol, reason, "api", price, source, age_s)
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
