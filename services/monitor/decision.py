"""Which price a check uses and how the guide prints it: pure functions, no I/O.

The layer of a price comes from `libs.common.freshness` (the one rule): LIVE, REST (Layer 2b), CACHED or STALE
(all but LIVE logged as `[FALLBACK]` and still acted on); an expired price is no price at all (Layer 3: the
monitor says it cannot monitor the symbol).
"""

from __future__ import annotations

from dataclasses import dataclass

from libs.common.freshness import Freshness
from libs.common.models import CloseReason, CloseRecord, PriceSource, Trigger
from libs.common.money import Paise, fmt_inr


@dataclass(frozen=True, slots=True)
class PriceView:
    """The price a check uses, where it came from and how old it is."""

    price: Paise
    source: PriceSource
    age_s: float

    @property
    def fallback(self) -> bool:
        return self.source is not PriceSource.LIVE


def view_of(ltp: Paise, freshness: Freshness) -> PriceView | None:
    """The usable view of a price judged by the freshness policy; None once it has expired."""
    source = freshness.source
    if source is None or freshness.age_s is None:
        return None
    return PriceView(ltp, source, freshness.age_s)


def fallback_line(symbol: str, view: PriceView) -> str:
    """`Using stale price for BOSCHLTD: ₹575.00 (45s old)` (the age in whole seconds)."""
    kind = {PriceSource.CACHED: "cached", PriceSource.REST: "REST"}.get(view.source, "stale")
    return f"Using {kind} price for {symbol}: {fmt_inr(view.price)} ({int(view.age_s)}s old)"


def trigger_tag(trigger: Trigger) -> str:
    """The guide's tag of a trigger line: SL or TP."""
    return "SL" if trigger.reason is CloseReason.STOP_LOSS else "TP"


def trigger_line(symbol: str, view: PriceView, trigger: Trigger) -> str:
    """`BOSCHLTD: Price ₹575.00 <= SL ₹698.25 (FALLBACK)`; live prices carry no suffix."""
    line = f"{symbol}: Price {fmt_inr(view.price)} {trigger.comparison} {trigger_tag(trigger)} {fmt_inr(trigger.level)}"
    return line + " (FALLBACK)" if view.fallback else line


def closed_line(record: CloseRecord) -> str:
    """`Position closed successfully: BOSCHLTD exit ₹575.00 pnl ₹-1600.00 (order 123)`."""
    if record.closed_by == "external":
        return f"Position {record.symbol} was closed outside the guard (the broker holds none); no order sent"
    return (
        f"Position closed successfully: {record.symbol} exit {fmt_inr(record.exit_price)} "
        f"pnl {fmt_inr(record.pnl)} (order {record.order_id})"
    )
