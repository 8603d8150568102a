from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from libs.common import keys
from libs.common.clock import ManualClock, ist_iso
from libs.common.money import fmt_inr, rupees_str, to_paise


def test_key_builders() -> None:
    assert keys.price("BOSCHLTD") == "price:BOSCHLTD"
    assert keys.position("KAYNES") == "position:KAYNES"
    assert keys.heartbeat("feed") == "heartbeat:feed"
    assert keys.idempotency("abc") == "idempotency:abc"


def test_every_name_is_unique_and_listed_in_readme() -> None:
    names = keys.all_names()
    fixed = {k: v for k, v in names.items() if not k.endswith("PREFIX")}
    assert len(set(fixed.values())) == len(fixed)
    with open("README.md", encoding="utf-8") as f:
        readme = f.read()
    missing = [v for v in names.values() if isinstance(v, str) and v not in readme]
    assert not missing, f"README does not list: {missing}"


def test_ist_timestamps_carry_the_offset() -> None:
    assert ist_iso(1_704_605_400.0) == "2024-01-07T11:00:00+05:30"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+05:30", ist_iso(0))


async def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(start=100.0)
    assert clock.now() == 100.0
    await clock.sleep(30)
    assert clock.now() == 130.0
    clock.advance(0.5)
    assert clock.monotonic() == 30.5
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)


@pytest.mark.parametrize(
    ("value", "paise"), [(575, 57500), ("698.25", 69825), (204.1, 20410), ("0.005", 0), ("0.015", 2)]
)
def test_to_paise(value: object, paise: int) -> None:
    assert to_paise(value) == paise  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["abc", "nan", "inf", ""])
def test_to_paise_rejects_non_numbers(bad: str) -> None:
    with pytest.raises(ValueError, match="not a price"):
        to_paise(bad)


def _by_decimal(text: str) -> int | None:
    """The rule written out once more, independently: Decimal, half-even to the paisa; None when not a price."""
    try:
        value = Decimal(text)
        return int(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN) * 100) if value.is_finite() else None
    except InvalidOperation:
        return None


@given(
    st.one_of(
        st.from_regex(r"\A[0-9]{1,14}\.[0-9]{2}\Z"),  # what Redis hashes hold: to_paise's integer shortcut
        st.from_regex(r"\A[-+ 0-9.e٣²]{1,18}\Z"),  # near misses: signs, exponents, non-ASCII digits, no digits
        st.text(max_size=20),
    )
)
@example("0001.50")
@example("1.5")
@example("12.345")
@example("١٢.٣٤")
@example("12.3²")
@example("99999999999999.99")
def test_to_paise_of_any_text_is_the_decimal_rule(text: str) -> None:
    expected = _by_decimal(text)
    if expected is None:
        with pytest.raises(ValueError, match="not a price"):
            to_paise(text)
    else:
        assert to_paise(text) == expected


def test_rupee_formatting() -> None:
    assert rupees_str(57500) == "575.00"
    assert rupees_str(-619500) == "-6195.00"
    assert rupees_str(5) == "0.05"
    assert fmt_inr(69825) == "₹698.25"
