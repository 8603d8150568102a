"""F&O contracts of a day: expiry dates, the model price, and which services know the simulator's rows."""

from __future__ import annotations

from datetime import date, datetime

import pytest
from pydantic import SecretStr

from libs.common.clock import IST
from libs.common.fno import OverLimits, _expiries, expires_on, is_expired, option_value, order_legs
from libs.common.instruments import guard_instruments, load_instruments
from libs.common.settings import Settings


def test_weekly_and_monthly_expiries_roll_over_month_and_year_ends() -> None:
    assert _expiries(date(2026, 12, 3), 1) == ([date(2026, 12, 8), date(2026, 12, 15)], date(2026, 12, 29))
    assert _expiries(date(2026, 12, 29), 1)[0][0] == date(2026, 12, 29)  # expiry day lists its own weekly
    assert _expiries(date(2026, 12, 30), 1) == ([date(2027, 1, 5), date(2027, 1, 12)], date(2027, 1, 26))


def test_a_contract_trades_until_1530_ist_of_its_expiry_date() -> None:
    day = datetime(2026, 12, 8, 9, 0, tzinfo=IST).timestamp()
    ce = next(i for i in load_instruments(now=day) if i.trading_symbol == "NIFTY 24000 CE 08 DEC 26")
    before = datetime(2026, 12, 8, 15, 29, 59, tzinfo=IST).timestamp()
    assert expires_on(ce, day) and not is_expired(ce, before) and is_expired(ce, before + 1)


def test_option_value_is_intrinsic_at_expiry_and_has_time_value_before() -> None:
    assert option_value(24100, 24000, 0, 0.14, True)[0] == 100
    assert option_value(24100, 24000, 0, 0.14, False)[0] == 0
    value, greeks = option_value(24000, 24000, 5 / 365, 0.14, True)
    assert 150 < value < 190 and 0.5 < greeks.delta < 0.55


def test_the_simulators_fno_rows_are_known_in_simulator_mode_only() -> None:
    sim = Settings(_env_file=None)  # type: ignore[call-arg]
    real = Settings(_env_file=None, upstox_access_token=SecretStr("real-token"))  # type: ignore[call-arg]
    assert any(i.segment == "NSE_FO" for i in guard_instruments(sim).all)
    assert not any(i.segment == "NSE_FO" for i in guard_instruments(real).all)  # their keys are not Upstox's


def test_order_legs_are_whole_lots_within_the_freeze_quantity() -> None:
    assert order_legs(5400, 75, 1800) == [1800, 1800, 1800]
    assert order_legs(3975, 75, 1800) == [1800, 1800, 375]
    assert order_legs(150, 75, 1800) == [150]
    assert order_legs(1750, 35, 875) == [875, 875]
    assert order_legs(1785, 35, 900) == [875, 875, 35]  # a freeze quantity that is not whole lots rounds down
    assert order_legs(39, 1, 100000.0) == [39]
    with pytest.raises(OverLimits, match="not a whole number of lots of 75"):
        order_legs(100, 75, 1800)
    with pytest.raises(OverLimits, match="needs 26 orders of at most 1800"):
        order_legs(26 * 1800, 75, 1800)
    with pytest.raises(OverLimits, match="below one lot"):
        order_legs(150, 75, 50)
