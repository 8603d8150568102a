"""Money is integer paise everywhere inside the guard (exact comparisons, no float drift).

Rupee strings ("575.00") appear only at the edges: Redis hashes people read, log lines, JSON.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import NewType

Paise = NewType("Paise", int)  # made by to_paise / ltp_paise when parsing, Paise(...) where one is computed

_ONE_PAISA = Decimal("0.01")


def to_paise(rupees: float | int | str | Decimal) -> Paise:
    """Rupees (number or numeric string) to integer paise, rounding half-even to the paisa.

    Raises ValueError for anything that is not a finite number, or too large to hold in paise
    (1e26 would make `quantize` raise decimal.InvalidOperation, which callers do not expect).
    """
    if isinstance(rupees, str) and len(rupees) <= 16 and rupees.isascii():
        # What Redis hashes hold ("1234.50"): exact integer arithmetic, a third of Decimal's cost (health parses
        # ~200 prices a request). Anything else takes the Decimal path below.
        whole, dot, frac = rupees.partition(".")
        if dot and len(frac) == 2 and whole.isdigit() and frac.isdigit():
            return Paise(int(whole) * 100 + int(frac))
    try:
        value = Decimal(str(rupees)) if not isinstance(rupees, Decimal) else rupees
    except InvalidOperation:
        raise ValueError(f"not a price: {rupees!r}") from None
    if not value.is_finite():
        raise ValueError(f"not a price: {rupees!r}")
    try:
        return Paise(int(value.quantize(_ONE_PAISA, rounding=ROUND_HALF_EVEN) * 100))
    except InvalidOperation:
        raise ValueError(f"not a price: {rupees!r}") from None


# No instrument Upstox lists trades near ₹1 crore a unit; anything above is a corrupt value, not a price.
MAX_LTP_PAISE = Paise(1_000_000_000)


def ltp_paise(rupees: float | int | str | Decimal) -> Paise:
    """A traded price in paise: like `to_paise`, and also ValueError unless 0 < price <= `MAX_LTP_PAISE`."""
    paise = to_paise(rupees)
    if not 0 < paise <= MAX_LTP_PAISE:
        raise ValueError(f"not a plausible price: {rupees!r}")
    return paise


def rupees_str(paise: Paise) -> str:
    """Paise as a rupee string with two decimals: 57500 -> '575.00', -619500 -> '-6195.00'."""
    sign = "-" if paise < 0 else ""
    whole, frac = divmod(abs(paise), 100)
    return f"{sign}{whole}.{frac:02d}"


def rupees(paise: Paise) -> float:
    """Paise as a JSON-friendly rupee number (two decimals exact for any realistic price)."""
    return paise / 100


def fmt_inr(paise: Paise) -> str:
    """Paise for log lines, as the guide writes them: '₹575.00'."""
    return "₹" + rupees_str(paise)
