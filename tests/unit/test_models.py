from __future__ import annotations

import pytest

from libs.common.models import CloseReason, MalformedRecord, Position, PriceEntry, Side


def pos(side: Side = Side.LONG, **kw: object) -> Position:
    base: dict[str, object] = {
        "symbol": "BOSCHLTD",
        "instrument_key": "NSE_EQ|INE323A01026",
        "side": side,
        "quantity": 39,
        "entry_price": 73500,
        "stop_loss": 69825,
        "take_profit": 80000,
        "opened_at": 1.0,
    }
    if side is Side.SHORT:
        base.update(stop_loss=80000, take_profit=69825)
    base.update(kw)
    return Position.model_validate(base)


def test_long_triggers_at_and_beyond_levels() -> None:
    p = pos()
    assert p.trigger(69826) is None
    t = p.trigger(69825)
    assert t and t.reason is CloseReason.STOP_LOSS and t.comparison == "<="
    t = p.trigger(80000)
    assert t and t.reason is CloseReason.TAKE_PROFIT and t.comparison == ">="
    assert p.trigger(79999) is None


def test_short_mirrors() -> None:
    p = pos(Side.SHORT)
    t = p.trigger(80000)
    assert t and t.reason is CloseReason.STOP_LOSS and t.comparison == ">="
    t = p.trigger(69825)
    assert t and t.reason is CloseReason.TAKE_PROFIT and t.comparison == "<="


def test_pnl_matches_the_guide() -> None:
    # a long of 39 from 735 to 575 loses 160 x 39; a short gains it
    assert pos().pnl(57500) == -624000
    assert pos(Side.SHORT).pnl(57500) == 624000


def test_levels_on_the_wrong_side_are_rejected() -> None:
    with pytest.raises(ValueError, match="stop_loss must be below"):
        pos(stop_loss=80000)


def test_redis_round_trip_is_readable() -> None:
    p = pos()
    data = p.to_redis()
    assert data["entry_price"] == "735.00" and data["stop_loss"] == "698.25"
    assert Position.from_redis(data) == p


def test_malformed_records_raise_malformed_record() -> None:
    with pytest.raises(MalformedRecord, match="position:BOSCHLTD"):
        Position.from_redis({"symbol": "BOSCHLTD", "entry_price": "abc"})
    with pytest.raises(MalformedRecord, match="price:X"):
        PriceEntry.from_redis("X", {"ltp": "1.0"})


def test_price_entry_age() -> None:
    e = PriceEntry.from_redis("KAYNES", {"ltp": "204.10", "instrument_key": "k", "as_of": "100.0"})
    assert e.ltp == 20410
    assert e.age_s(110.0) == 10.0
    assert e.age_s(90.0) == 0.0
