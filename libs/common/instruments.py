"""The instrument list: Upstox master-file rows shipped in `libs/common/data/instruments.json`.

Each row has the shape of Upstox's `complete.json.gz` rows (`instrument_key`, `trading_symbol`, `tick_size`
in **paise**, ...) plus two simulator-only fields: `close_price` (previous close in rupees, the simulator's
starting price) and `price_band_pct` (the daily band around the previous close). Index rows have no
`tick_size` or `lot_size`, as in the real file.

Shipped rows: `NSE_INDEX|Nifty 50` (NIFTY), `NSE_INDEX|Nifty Bank` (BANKNIFTY), real NSE equities whose
ISINs are well known (BOSCHLTD `NSE_EQ|INE323A01026`, KAYNES `NSE_EQ|INE918Z01012`, RELIANCE, ...), and
200 obviously synthetic equities `SIMEQ001`..`SIMEQ200` (key `NSE_EQ|SIMEQ001`). `extra=N` adds N more
synthetic rows `SIMEQ0001`.. (four or more digits, key `NSE_EQ|SIMEQ0001`) for benchmarks. NSE_FO rows
(NIFTY / BANKNIFTY futures and options) are generated for the day by `libs.common.fno`.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from libs.common.clock import to_ist

if TYPE_CHECKING:
    from libs.common.settings import Settings

DEFAULT_INDEX_TICK_PAISE = 5
_EXTRA_BANDS = (20, 10, 5, 2)


@dataclass(frozen=True, slots=True)
class Instrument:
    """One tradable (or index) instrument. Prices are integer paise."""

    instrument_key: str
    trading_symbol: str
    name: str
    segment: str
    exchange: str
    instrument_type: str
    isin: str = ""
    exchange_token: str = ""
    tick_size_paise: int = DEFAULT_INDEX_TICK_PAISE
    lot_size: int = 1
    freeze_quantity: float = 100000.0
    close_price_paise: int = 10000
    price_band_pct: float = 20.0
    # F&O only (`libs.common.fno`): 0 / "" for equities and indices.
    expiry_ms: int = 0  # epoch ms of 23:59:59 IST on the expiry date, as in Upstox's file
    strike_paise: int = 0
    underlying_key: str = ""
    weekly: bool = False

    @property
    def is_derivative(self) -> bool:
        """True for futures and options (they expire; their price follows `underlying_key`)."""
        return bool(self.expiry_ms)

    @property
    def is_option(self) -> bool:
        return self.instrument_type in ("CE", "PE")

    @property
    def is_index(self) -> bool:
        """True for `NSE_INDEX|...` style rows (no depth, no volume, not orderable)."""
        return self.segment.endswith("_INDEX")

    @property
    def synthetic(self) -> bool:
        """True for the simulator's made-up `SIMEQ*` instruments (they do not exist at Upstox)."""
        return self.trading_symbol.startswith("SIMEQ") and self.instrument_key == f"NSE_EQ|{self.trading_symbol}"

    @property
    def band_paise(self) -> tuple[int, int]:
        """The day's (lower, upper) circuit limits in paise, snapped inwards to the tick size."""
        tick = self.tick_size_paise
        width = self.close_price_paise * self.price_band_pct / 100
        low = -(-int(self.close_price_paise - width) // tick) * tick  # ceil to tick
        high = int(self.close_price_paise + width) // tick * tick
        return max(low, tick), high

    def master_row(self) -> dict[str, Any]:
        """The row as it appears in the instrument file (Upstox shape plus the simulator fields)."""
        row: dict[str, Any] = {
            "segment": self.segment,
            "name": self.name,
            "exchange": self.exchange,
            "instrument_type": self.instrument_type,
            "instrument_key": self.instrument_key,
            "trading_symbol": self.trading_symbol,
        }
        if self.isin:
            row["isin"] = self.isin
        if self.exchange_token:
            row["exchange_token"] = self.exchange_token
        if not self.is_index:
            row.update(
                lot_size=self.lot_size,
                freeze_quantity=self.freeze_quantity,
                tick_size=float(self.tick_size_paise),
                security_type="NORMAL",
            )
        if self.is_derivative:
            row.update(expiry=self.expiry_ms, weekly=self.weekly, minimum_lot=self.lot_size)
            row.update(underlying_key=self.underlying_key, underlying_type="INDEX")
            if self.is_option:
                row["strike_price"] = self.strike_paise / 100
        row["close_price"] = self.close_price_paise / 100
        row["price_band_pct"] = self.price_band_pct
        return row


def _from_row(row: dict[str, Any]) -> Instrument:
    tick = round(float(row.get("tick_size", DEFAULT_INDEX_TICK_PAISE))) or 1
    close = round(float(row.get("close_price", 100.0)) * 100) // tick * tick
    return Instrument(
        instrument_key=str(row["instrument_key"]),
        trading_symbol=str(row["trading_symbol"]),
        name=str(row.get("name", row["trading_symbol"])),
        segment=str(row["segment"]),
        exchange=str(row.get("exchange", "NSE")),
        instrument_type=str(row.get("instrument_type", "EQ")),
        isin=str(row.get("isin", "")),
        exchange_token=str(row.get("exchange_token", "")),
        tick_size_paise=tick,
        lot_size=int(row.get("lot_size", 1)),
        freeze_quantity=float(row.get("freeze_quantity", 100000.0)),
        close_price_paise=max(close, tick),
        price_band_pct=float(row.get("price_band_pct", 20.0)),
    )


@cache
def _shipped() -> tuple[Instrument, ...]:
    text = resources.files("libs.common").joinpath("data/instruments.json").read_text(encoding="utf-8")
    return tuple(_from_row(row) for row in json.loads(text))


def _synthetic(count: int) -> Iterator[Instrument]:
    width = max(4, len(str(count)))
    for i in range(1, count + 1):
        symbol = f"SIMEQ{i:0{width}d}"
        close_paise = 5000 + (i * 7919) % 295000  # ₹50 .. ₹3,000, deterministic
        tick = 1 if close_paise < 25000 else 5 if close_paise < 100000 else 10
        yield Instrument(
            instrument_key=f"NSE_EQ|{symbol}",
            trading_symbol=symbol,
            name=f"SIMULATED EQUITY {symbol[5:]}",
            segment="NSE_EQ",
            exchange="NSE",
            instrument_type="EQ",
            isin=symbol,
            tick_size_paise=tick,
            close_price_paise=close_paise // tick * tick,
            price_band_pct=_EXTRA_BANDS[i % len(_EXTRA_BANDS)],
        )


def load_instruments(
    extra: int = 0, *, now: float | None = None, expiry_weekday: int = 1, fno: bool = True
) -> list[Instrument]:
    """The shipped instruments, the simulator's NIFTY / BANKNIFTY futures and options listed on the IST day of
    `now` (default: the wall clock; none when `fno` is False), then `extra` synthetic equities (`SIMEQ0001`..)
    for benchmarks.

    Deterministic: the same `extra`, day and `expiry_weekday` always give the same list in the same order.
    """
    from libs.common.fno import fno_instruments  # fno builds on Instrument

    shipped = _shipped()
    day = to_ist(time.time() if now is None else now).date()
    contracts = fno_instruments(shipped, day, expiry_weekday) if fno else ()
    return [*shipped, *contracts, *_synthetic(extra)]


class InstrumentIndex:
    """Lookups by trading symbol and by instrument key over a list of instruments."""

    def __init__(self, instruments: Iterable[Instrument]) -> None:
        self.all: list[Instrument] = list(instruments)
        self._by_symbol = {i.trading_symbol: i for i in self.all}
        self._by_key = {i.instrument_key: i for i in self.all}

    def __len__(self) -> int:
        return len(self.all)

    def by_symbol(self, symbol: str) -> Instrument | None:
        """The instrument traded as `symbol` (e.g. "BOSCHLTD"), or None."""
        return self._by_symbol.get(symbol)

    def by_key(self, instrument_key: str) -> Instrument | None:
        """The instrument with key `instrument_key` (e.g. "NSE_EQ|INE323A01026"), or None."""
        return self._by_key.get(instrument_key)

    def symbol_of(self, instrument_key: str) -> str | None:
        """Trading symbol for an instrument key, or None when unknown."""
        inst = self._by_key.get(instrument_key)
        return inst.trading_symbol if inst else None

    def key_of(self, symbol: str) -> str | None:
        """Instrument key for a trading symbol, or None when unknown."""
        inst = self._by_symbol.get(symbol)
        return inst.instrument_key if inst else None


def instrument_index(
    extra: int = 0, *, now: float | None = None, expiry_weekday: int = 1, fno: bool = True
) -> InstrumentIndex:
    """`InstrumentIndex` over `load_instruments(...)`."""
    return InstrumentIndex(load_instruments(extra, now=now, expiry_weekday=expiry_weekday, fno=fno))


def guard_instruments(settings: Settings, now: float | None = None) -> InstrumentIndex:
    """The instruments a guard service knows. The F&O rows are the simulator's own (their keys are not real
    Upstox keys), so they are known in simulator mode only; with a real token an F&O position is registered
    with its `instrument_key` and has no lot or expiry checks."""
    sim = settings.simulator_mode
    return instrument_index(
        settings.sim_extra_instruments if sim else 0, now=now, expiry_weekday=settings.fno_expiry_weekday, fno=sim
    )


def master_file_gz(instruments: Iterable[Instrument]) -> bytes:
    """The instruments as a gzipped JSON array, like Upstox's `complete.json.gz`."""
    body = json.dumps([i.master_row() for i in instruments], separators=(",", ":")).encode()
    return gzip.compress(body, mtime=0)
