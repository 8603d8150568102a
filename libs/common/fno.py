"""NSE F&O contracts: the NIFTY / BANKNIFTY futures and options listed on a day, their expiry and value.

The rows are generated for the IST day they are listed on (so a simulator never runs out of contracts), in
Upstox's master-file shape (`lot_size`, `freeze_quantity`, `tick_size`, `expiry` = epoch ms of 23:59:59 IST
of the expiry date, `strike_price`, `underlying_key`). Every service generates the same rows for the same
day and `expiry_weekday`, so the guard and the simulator agree on keys without downloading the file.

Listed: NIFTY weekly options of this week's and next week's expiry and the monthly (last expiry weekday of
the month), BANKNIFTY monthly options (NSE dropped its weeklies in 2024), 11 strikes around the previous
close, CE and PE, and both monthly futures. A contract trades until 15:30 IST of its expiry date.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING

from libs.common.clock import IST
from libs.common.money import Paise

if TYPE_CHECKING:
    from libs.common.instruments import Instrument

OPTION_TICK_PAISE = Paise(5)
FUTURE_TICK_PAISE = Paise(10)
STRIKES_EACH_SIDE = 5
TRADING_ENDS = time(15, 30)
_YEAR_S = 365 * 86400.0
_FUTURE_CARRY = 0.065  # annual cost of carry: a future trades this much over spot, falling to 0 at expiry
_KIND_CODES = {"FUT": 0, "CE": 1, "PE": 2}


@dataclass(frozen=True, slots=True)
class Underlying:
    symbol: str  # the index's trading symbol in the instrument file
    key: str
    lot_size: int
    freeze_quantity: int
    strike_step: int  # rupees
    volatility: float  # annual, for the option model
    weekly: bool


UNDERLYINGS = (
    Underlying("NIFTY", "NSE_INDEX|Nifty 50", 75, 1800, 50, 0.14, weekly=True),
    Underlying("BANKNIFTY", "NSE_INDEX|Nifty Bank", 35, 875, 100, 0.17, weekly=False),
)


MAX_SLICES = 25  # the exchange slices one order into at most this many children


class OverLimits(ValueError):
    """A quantity that cannot be sent within the exchange's lot and freeze-quantity limits."""


def order_legs(quantity: int, lot_size: int, freeze_quantity: float, max_legs: int = MAX_SLICES) -> list[int]:
    """Split `quantity` into exchange orders that each stand on their own: whole lots, at most the freeze
    quantity each (rounded down to whole lots), largest first. For orders nobody slices, such as the one a GTT
    places when it fires. Raises OverLimits (naming the rule) when it cannot be done in `max_legs` orders."""
    lot = max(lot_size, 1)
    per_leg = int(freeze_quantity) // lot * lot
    if quantity < 1 or quantity % lot:
        raise OverLimits(f"quantity {quantity} is not a whole number of lots of {lot}")
    if per_leg < lot:
        raise OverLimits(f"the freeze quantity {int(freeze_quantity)} is below one lot of {lot}")
    full, rest = divmod(quantity, per_leg)
    legs = [per_leg] * full + ([rest] if rest else [])
    if len(legs) > max_legs:
        raise OverLimits(
            f"quantity {quantity} needs {len(legs)} orders of at most {per_leg} (the freeze quantity), "
            f"more than {max_legs}"
        )
    return legs


def trading_ends_at(inst: Instrument) -> float:
    """Epoch s at which `inst` stops trading (15:30 IST of its expiry date); inf for non-derivatives."""
    if not inst.expiry_ms:
        return math.inf
    return datetime.combine(expiry_date(inst), TRADING_ENDS, tzinfo=IST).timestamp()


def expiry_date(inst: Instrument) -> date:
    return datetime.fromtimestamp(inst.expiry_ms / 1000, tz=IST).date()


def is_expired(inst: Instrument, now: float) -> bool:
    return now >= trading_ends_at(inst)


def expires_on(inst: Instrument, now: float) -> bool:
    """True when `inst` expires on the IST day of `now` (whether or not 15:30 has passed)."""
    return bool(inst.expiry_ms) and expiry_date(inst) == datetime.fromtimestamp(now, tz=IST).date()


def _norm_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


@dataclass(frozen=True, slots=True)
class Greeks:
    delta: float
    gamma: float
    theta: float  # rupees per day
    vega: float  # rupees per volatility point
    iv: float  # annual, as a fraction


def option_value(spot: float, strike: float, years: float, vol: float, call: bool) -> tuple[float, Greeks]:
    """Black-Scholes value (rupees, zero rates) and greeks; intrinsic value once `years` reaches 0."""
    if years <= 0 or spot <= 0:
        intrinsic = max(spot - strike, 0.0) if call else max(strike - spot, 0.0)
        delta = (1.0 if spot > strike else 0.0) if call else (-1.0 if spot < strike else 0.0)
        return intrinsic, Greeks(delta, 0.0, 0.0, 0.0, vol)
    root = vol * math.sqrt(years)
    d1 = (math.log(spot / strike) + 0.5 * vol * vol * years) / root
    d2 = d1 - root
    pdf = math.exp(-0.5 * d1 * d1) / math.sqrt(2 * math.pi)
    if call:
        value, delta = spot * _norm_cdf(d1) - strike * _norm_cdf(d2), _norm_cdf(d1)
    else:
        value, delta = strike * _norm_cdf(-d2) - spot * _norm_cdf(-d1), _norm_cdf(d1) - 1.0
    gamma = pdf / (spot * root)
    theta = -spot * pdf * vol / (2 * math.sqrt(years)) / 365
    vega = spot * pdf * math.sqrt(years) / 100
    return value, Greeks(delta, gamma, theta, vega, vol)


def underlying_of(inst: Instrument) -> Underlying | None:
    return next((u for u in UNDERLYINGS if u.key == inst.underlying_key), None)


def fair_price_paise(inst: Instrument, spot_paise: Paise, now: float) -> tuple[Paise, Greeks | None]:
    """The derivative's model price (paise, on its tick, at least one tick) given its underlying's price."""
    years = max(trading_ends_at(inst) - now, 0.0) / _YEAR_S
    spot = spot_paise / 100
    greeks = None
    if inst.is_option:
        und = underlying_of(inst)
        vol = und.volatility if und else 0.15
        value, greeks = option_value(spot, inst.strike_paise / 100, years, vol, inst.instrument_type == "CE")
    else:
        value = spot * (1 + _FUTURE_CARRY * years)
    tick = inst.tick_size_paise
    return Paise(max(round(value * 100 / tick) * tick, tick)), greeks


def _last_weekday_of_month(year: int, month: int, weekday: int) -> date:
    following = date(year + month // 12, month % 12 + 1, 1)
    last = following - timedelta(days=1)
    return last - timedelta(days=(last.weekday() - weekday) % 7)


def _expiries(day: date, weekday: int) -> tuple[list[date], date]:
    """(this and next weekly expiry, the monthly expiry) on or after `day`."""
    first = day + timedelta(days=(weekday - day.weekday()) % 7)
    monthly = _last_weekday_of_month(day.year, day.month, weekday)
    if monthly < day:
        monthly = _last_weekday_of_month(day.year + day.month // 12, day.month % 12 + 1, weekday)
    return [first, first + timedelta(days=7)], monthly


def _expiry_ms(expiry: date) -> int:
    return int(datetime.combine(expiry, time(23, 59, 59), tzinfo=IST).timestamp() * 1000)


def _label(expiry: date) -> str:
    return expiry.strftime("%d %b %y").upper()


def fno_instruments(shipped: Iterable[Instrument], day: date, expiry_weekday: int = 1) -> Iterator[Instrument]:
    """The F&O contracts listed on `day` for the indices among `shipped` (expiries fall on `expiry_weekday`,
    Monday = 0; NSE's is Tuesday). Previous closes are the model prices at 09:15 IST on `day`."""
    from libs.common.instruments import Instrument  # instruments imports this module lazily

    indices = {i.instrument_key: i for i in shipped if i.is_index}
    weeklies, monthly = _expiries(day, expiry_weekday)
    priced_at = datetime.combine(day, time(9, 15), tzinfo=IST).timestamp()
    for number, und in enumerate(UNDERLYINGS, start=1):
        index = indices.get(und.key)
        if index is None:
            continue
        spot = index.close_price_paise
        atm = round(spot / 100 / und.strike_step) * und.strike_step
        expiries = [(e, e != monthly) for e in weeklies if e != monthly] if und.weekly else []
        expiries.append((monthly, False))
        for expiry, weekly in sorted(expiries):
            expiry_ms = _expiry_ms(expiry)
            contracts: list[tuple[str, str, Paise]] = []
            if not weekly:
                contracts.append(("FUT", f"{und.symbol} FUT {_label(expiry)}", Paise(0)))
            for n in range(-STRIKES_EACH_SIDE, STRIKES_EACH_SIDE + 1):
                strike = atm + n * und.strike_step
                for kind in ("CE", "PE"):
                    contracts.append((kind, f"{und.symbol} {strike} {kind} {_label(expiry)}", Paise(strike * 100)))
            for kind, symbol, strike_paise in contracts:
                # A token made of what the contract is (not of its place in the list), so a service started on
                # another day never maps a key to a different contract.
                token = f"{number}{expiry:%y%m%d}{strike_paise // 100:06d}{_KIND_CODES[kind]}"
                inst = Instrument(
                    instrument_key=f"NSE_FO|{token}",
                    trading_symbol=symbol,
                    name=und.symbol,
                    segment="NSE_FO",
                    exchange="NSE",
                    instrument_type=kind,
                    exchange_token=str(token),
                    tick_size_paise=FUTURE_TICK_PAISE if kind == "FUT" else OPTION_TICK_PAISE,
                    lot_size=und.lot_size,
                    freeze_quantity=float(und.freeze_quantity),
                    price_band_pct=100.0 if kind != "FUT" else 10.0,
                    expiry_ms=expiry_ms,
                    strike_paise=strike_paise,
                    underlying_key=und.key,
                    weekly=weekly,
                )
                close, _ = fair_price_paise(inst, spot, priced_at)
                yield _with_close(inst, close)


def _with_close(inst: Instrument, close_paise: Paise) -> Instrument:
    return replace(inst, close_price_paise=close_paise)
