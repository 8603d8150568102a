"""Which guarded positions are F&O contracts expiring today, and how long they still trade.

Shared by the monitor (the warning before 15:30 IST and the loud report after it) and the api (`/status`,
connection health), so both name the same positions the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from libs.common.clock import ist_iso
from libs.common.fno import expires_on, trading_ends_at
from libs.common.instruments import InstrumentIndex
from libs.common.models import Position


@dataclass(frozen=True, slots=True)
class Expiring:
    """An open position whose contract expires today."""

    position: Position
    trading_ends: float  # epoch s, 15:30 IST today

    def minutes_left(self, now: float) -> float:
        return max(0.0, (self.trading_ends - now) / 60)

    def as_dict(self, now: float) -> dict[str, object]:
        position = self.position
        return {
            **contract_dict(position.symbol, position.instrument_key, self.trading_ends, now),
            "quantity": position.quantity,
            "side": str(position.side),
        }


def contract_dict(symbol: str, instrument_key: str, trading_ends: float, now: float) -> dict[str, object]:
    return {
        "symbol": symbol,
        "instrument_key": instrument_key,
        "trading_ends": ist_iso(trading_ends),
        "minutes_left": round(max(0.0, (trading_ends - now) / 60), 1),
        "expired": now >= trading_ends,
    }


def expiring_symbols(symbols: Iterable[str], index: InstrumentIndex, now: float) -> list[dict[str, object]]:
    """Of `symbols` (open positions' symbols), the contracts expiring today, for views without the records."""
    out = []
    ordered = sorted(symbols)
    for symbol, inst in zip(ordered, index.by_symbols(ordered), strict=True):
        if inst is not None and expires_on(inst, now):
            out.append(contract_dict(symbol, inst.instrument_key, trading_ends_at(inst), now))
    return out


def expiring_today(positions: Iterable[Position], index: InstrumentIndex, now: float) -> list[Expiring]:
    """The positions among `positions` whose instrument (looked up by key) expires on today's IST date."""
    out = []
    for position in positions:
        inst = index.by_key(position.instrument_key)
        if inst is not None and expires_on(inst, now):
            out.append(Expiring(position, trading_ends_at(inst)))
    return sorted(out, key=lambda e: e.position.symbol)
