"""The pure decision rules: which price a check uses and the guide's wording.

The close retry's delays are libs/common/backoff.py's (tests/unit/test_backoff.py, and test_monitor.py's backoff
test for the monitor's own)."""

from __future__ import annotations

import pytest

from libs.common.freshness import FeedLiveness, FreshnessPolicy, PriceTruth
from libs.common.models import Position, PriceSource
from services.monitor.decision import PriceView, fallback_line, trigger_line, view_of
from tests.monitor.conftest import long_bosch, long_kaynes, short_reliance

NOW = 10_000.0


POLICY = FreshnessPolicy(stale_after_s=30, expire_after_s=300, heartbeat_max_age_s=3)


@pytest.mark.parametrize(
    ("age_s", "live", "source"),
    [
        (0.0, True, PriceSource.LIVE),
        (29.99, True, PriceSource.LIVE),
        (40.0, True, PriceSource.STALE),  # a live feed that stopped vouching for it: its true age decides
        (400.0, True, None),
        (0.0, False, PriceSource.CACHED),
        (29.99, False, PriceSource.CACHED),
        (30.0, False, PriceSource.STALE),
        (299.9, False, PriceSource.STALE),
        (300.0, False, None),  # expired: Layer 3
    ],
)
def test_the_three_layers(age_s: float, live: bool, source: PriceSource | None) -> None:
    feed = FeedLiveness(live, "test")
    view = view_of(57500, POLICY.judge(PriceTruth(57500, NOW - age_s), NOW, feed))
    assert (view.source if view else None) is source
    if view is not None:
        assert (view.price, view.age_s) == (57500, pytest.approx(age_s))


@pytest.mark.parametrize(
    ("position", "price", "expected"),
    [
        (long_bosch(), 69825, "BOSCHLTD: Price ₹698.25 <= SL ₹698.25"),  # exactly at SL
        (long_bosch(), 69826, None),
        (long_bosch(), 80000, "BOSCHLTD: Price ₹800.00 >= TP ₹800.00"),  # exactly at TP
        (long_bosch(), 79999, None),
        (short_reliance(), 145000, "RELIANCE: Price ₹1450.00 >= SL ₹1450.00"),
        (short_reliance(), 144999, None),
        (short_reliance(), 135000, "RELIANCE: Price ₹1350.00 <= TP ₹1350.00"),
        (short_reliance(), 135001, None),
    ],
)
def test_boundaries_trigger_and_print_as_the_guide(position: Position, price: int, expected: str | None) -> None:
    view = PriceView(price, PriceSource.LIVE, 0.1)
    trigger = position.trigger(price)
    assert (trigger_line(position.symbol, view, trigger) if trigger else None) == expected


def test_fallback_wording() -> None:
    stale = PriceView(57500, PriceSource.STALE, 45.7)
    trigger = long_bosch().trigger(57500)
    assert trigger is not None
    assert fallback_line("BOSCHLTD", stale) == "Using stale price for BOSCHLTD: ₹575.00 (45s old)"
    assert trigger_line("BOSCHLTD", stale, trigger) == "BOSCHLTD: Price ₹575.00 <= SL ₹698.25 (FALLBACK)"
    cached = PriceView(20410, PriceSource.CACHED, 10.2)
    tp = long_kaynes().trigger(20410)
    assert tp is not None
    assert fallback_line("KAYNES", cached) == "Using cached price for KAYNES: ₹204.10 (10s old)"
    assert trigger_line("KAYNES", cached, tp) == "KAYNES: Price ₹204.10 >= TP ₹197.76 (FALLBACK)"
