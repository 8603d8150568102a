"""Futures and options follow their underlying index: each move of the index reprices its contracts with
the model of `libs.common.fno` (intrinsic + time value), so a premium moves several times faster than the
index in percent. A pinned contract keeps its pinned price; an expired one (after 15:30 IST on its expiry
date) no longer ticks and refuses orders. Greeks, OI and IV for the `option_greeks` / `full` feeds come
from the same model."""

from __future__ import annotations

from dataclasses import dataclass

from libs.common.fno import Greeks, fair_price_paise, is_expired
from libs.common.instruments import Instrument
from libs.common.money import Paise


@dataclass(frozen=True, slots=True)
class OptionStats:
    greeks: Greeks
    oi: int


class Derivatives:
    """Which contracts follow which underlying (indices into the market's instrument list)."""

    def __init__(self, instruments: list[Instrument]) -> None:
        self.instruments = instruments
        keys = {inst.instrument_key: i for i, inst in enumerate(instruments)}
        self.followers: dict[int, list[int]] = {}
        for i, inst in enumerate(instruments):
            und = keys.get(inst.underlying_key) if inst.is_derivative else None
            if und is not None:
                self.followers.setdefault(und, []).append(i)
        self.underlying_of = {d: u for u, ds in self.followers.items() for d in ds}

    def fair(self, idx: int, spot_paise: Paise, now: float) -> Paise | None:
        """The contract's model price inside its daily band (the exchange's operating range), None when it has
        expired (it no longer trades)."""
        inst = self.instruments[idx]
        if is_expired(inst, now):
            return None
        low, high = inst.band_paise
        return min(max(fair_price_paise(inst, spot_paise, now)[0], low), high)

    def stats(self, idx: int, spot_paise: Paise, now: float) -> OptionStats | None:
        """Greeks and open interest of an option (None for futures and non-derivatives)."""
        inst = self.instruments[idx]
        if not inst.is_option:
            return None
        _, greeks = fair_price_paise(inst, spot_paise, now)
        assert greeks is not None
        # Open interest: deterministic, largest at the money (lots outstanding x lot size).
        distance = abs(spot_paise - inst.strike_paise) / max(inst.strike_paise, 1)
        lots = int(40000 / (1 + 200 * distance)) + int(inst.exchange_token or 0) % 97
        return OptionStats(greeks, lots * inst.lot_size)
