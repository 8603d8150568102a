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

A guard process reads its instruments from `INSTRUMENTS_URL` when it is set (a path or an http(s) URL of an
Upstox instrument file, e.g. Upstox's `NSE.json.gz`, or the simulator's own at `/market-quote/instruments/exchange/
complete.json.gz`), and lists them again once per trading day (`GuardInstruments`): F&O contracts are listed and
expire every week, so a guard running for days must not keep yesterday's list.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as time_of_day
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from loguru import logger

from libs.common.clock import IST, Clock, SystemClock, to_ist
from libs.common.money import Paise

if TYPE_CHECKING:
    from libs.common.settings import Settings

DEFAULT_INDEX_TICK_PAISE = Paise(5)
_EXTRA_BANDS = (20, 10, 5, 2)
LISTED_AT = time_of_day(6, 30)  # IST: Upstox rewrites its instrument files around 06:00, the market opens at 09:15
RETRY_S = 60.0  # a list that could not be read is asked for again this much later
KEEP_EXPIRED_S = 7 * 86400  # a contract gone from the new list stays known this long after it stopped trading


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
    tick_size_paise: Paise = DEFAULT_INDEX_TICK_PAISE
    lot_size: int = 1
    freeze_quantity: float = 100000.0
    close_price_paise: Paise = Paise(10000)
    price_band_pct: float = 20.0
    # F&O only (`libs.common.fno`): 0 / "" for equities and indices.
    expiry_ms: int = 0  # epoch ms of 23:59:59 IST on the expiry date, as in Upstox's file
    strike_paise: Paise = Paise(0)
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
    def band_paise(self) -> tuple[Paise, Paise]:
        """The day's (lower, upper) circuit limits in paise, snapped inwards to the tick size."""
        tick = self.tick_size_paise
        width = self.close_price_paise * self.price_band_pct / 100
        low = -(-int(self.close_price_paise - width) // tick) * tick  # ceil to tick
        high = int(self.close_price_paise + width) // tick * tick
        return Paise(max(low, tick)), Paise(high)

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
    tick = Paise(round(float(row.get("tick_size", DEFAULT_INDEX_TICK_PAISE))) or 1)
    close = Paise(round(float(row.get("close_price", 100.0)) * 100) // tick * tick)
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
        expiry_ms=int(row.get("expiry") or 0),
        strike_paise=Paise(round(float(row.get("strike_price") or 0) * 100)),
        underlying_key=str(row.get("underlying_key") or ""),
        weekly=bool(row.get("weekly", False)),
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
        tick = Paise(1 if close_paise < 25000 else 5 if close_paise < 100000 else 10)
        yield Instrument(
            instrument_key=f"NSE_EQ|{symbol}",
            trading_symbol=symbol,
            name=f"SIMULATED EQUITY {symbol[5:]}",
            segment="NSE_EQ",
            exchange="NSE",
            instrument_type="EQ",
            isin=symbol,
            tick_size_paise=tick,
            close_price_paise=Paise(close_paise // tick * tick),
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
    day = to_ist(time.time() if now is None else now).date()
    contracts = _contracts(day, expiry_weekday) if fno else ()
    return [*_shipped(), *contracts, *_synthetic(extra)]


@lru_cache(maxsize=4)
def _contracts(day: date, expiry_weekday: int) -> tuple[Instrument, ...]:
    """The day's F&O rows, priced once per process (every service builds several lists at start)."""
    from libs.common.fno import fno_instruments  # fno builds on Instrument

    return tuple(fno_instruments(_shipped(), day, expiry_weekday))


class InstrumentIndex:
    """Lookups by trading symbol and by instrument key over a list of instruments."""

    def __init__(self, instruments: Iterable[Instrument]) -> None:
        self._list(list(instruments))

    def _list(self, instruments: list[Instrument]) -> None:
        """Take `instruments` as the list (no await in here: a reader never sees half of it). A symbol listed on
        several exchanges (RELIANCE on NSE_EQ and BSE_EQ in `complete.json.gz`) means its NSE row."""
        by_symbol: dict[str, Instrument] = {}
        for inst in sorted(instruments, key=lambda i: not i.segment.startswith("NSE_")):
            by_symbol.setdefault(inst.trading_symbol, inst)
        self.all: list[Instrument] = instruments
        self._by_symbol = by_symbol
        self._by_key = {i.instrument_key: i for i in instruments}

    def __len__(self) -> int:
        return len(self.all)

    def by_symbol(self, symbol: str) -> Instrument | None:
        """The instrument traded as `symbol` (e.g. "BOSCHLTD"), or None."""
        return self._by_symbol.get(symbol)

    def by_symbols(self, symbols: Iterable[str]) -> list[Instrument | None]:
        """`by_symbol` of each of `symbols`, in their order (one refresh check for all: health asks for ~200)."""
        get = self._by_symbol.get
        return [get(symbol) for symbol in symbols]

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


class GuardInstruments(InstrumentIndex):
    """The instruments a guard process knows, listed again once per trading day.

    `load(now)` gives the list for the day of `now`; it is called at start and again by the first lookup after
    06:30 IST of each new day (in a thread, so a slow download never holds the event loop; lookups answer from
    the previous list meanwhile). A list that cannot be read keeps the previous one (at start: `fallback`) and
    is asked for again RETRY_S later. A contract missing from the new list that stopped trading within
    KEEP_EXPIRED_S stays known, so a position still open in it is reported, never dropped.
    """

    def __init__(
        self, load: Callable[[float], list[Instrument]], clock: Clock, fallback: Callable[[], list[Instrument]]
    ) -> None:
        self._load = load
        self._clock = clock
        self._refreshing: asyncio.Task[None] | None = None
        now = clock.now()
        try:
            listed = load(now)
            self._due = next_listing(now)
        except (OSError, ValueError, httpx.HTTPError) as exc:
            logger.warning(f"Instrument list unreadable ({exc}); using the shipped list, asking again in {RETRY_S:g} s")
            listed, self._due = fallback(), now + RETRY_S
        super().__init__(listed)

    def by_symbol(self, symbol: str) -> Instrument | None:
        self._refresh_if_due()
        return super().by_symbol(symbol)

    def by_symbols(self, symbols: Iterable[str]) -> list[Instrument | None]:
        self._refresh_if_due()
        return super().by_symbols(symbols)

    def by_key(self, instrument_key: str) -> Instrument | None:
        self._refresh_if_due()
        return super().by_key(instrument_key)

    def _refresh_if_due(self) -> None:
        now = self._clock.now()
        if now < self._due or self._refreshing is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a command line): read it here
            self._take(now, self._read(now))
            return
        self._refreshing = loop.create_task(self._refresh(now), name="instruments.refresh")

    async def _refresh(self, now: float) -> None:
        try:
            self._take(now, await asyncio.to_thread(self._read, now))
        finally:
            self._refreshing = None

    def _read(self, now: float) -> list[Instrument] | None:
        try:
            return self._load(now)
        except (OSError, ValueError, httpx.HTTPError) as exc:
            logger.warning(f"Instrument list unreadable ({exc}); keeping the previous one, again in {RETRY_S:g} s")
            return None

    def _take(self, now: float, listed: list[Instrument] | None) -> None:
        if listed is None:
            self._due = now + RETRY_S
            return
        from libs.common.fno import trading_ends_at  # fno builds on Instrument

        keys = {i.instrument_key for i in listed}
        kept = [
            i for i in self.all
            if i.is_derivative and i.instrument_key not in keys and now - trading_ends_at(i) < KEEP_EXPIRED_S
        ]  # fmt: skip
        self._list([*listed, *kept])
        self._due = next_listing(now)
        day = to_ist(now).date()
        logger.info(f"Instruments listed for {day}: {len(listed)} (and {len(kept)} recently expired contracts)")


def next_listing(now: float) -> float:
    """Epoch s of the next LISTED_AT (IST) after `now`: when a new day's instrument list is read."""
    today = datetime.combine(to_ist(now).date(), LISTED_AT, tzinfo=IST)
    return (today if today.timestamp() > now else today + timedelta(days=1)).timestamp()


def read_instrument_file(
    source: str, *, verify: ssl.SSLContext | bool = True, timeout_s: float = 60
) -> list[Instrument]:
    """The rows of an Upstox instrument file (a gzipped JSON array, or plain JSON) at a path or http(s) URL.
    A row without `instrument_key`, `trading_symbol` or `segment` is skipped. Raises OSError, httpx.HTTPError
    or ValueError (not JSON, or no row at all)."""
    if source.startswith(("http://", "https://")):
        with httpx.Client(timeout=timeout_s, verify=verify, trust_env=False, follow_redirects=True) as http:
            resp = http.get(source)
            resp.raise_for_status()
            data = resp.content
    else:
        data = Path(source).expanduser().read_bytes()
    if data[:2] == b"\x1f\x8b":  # served as application/gzip, not Content-Encoding: unzip here
        data = gzip.decompress(data)
    rows = json.loads(data)
    if not isinstance(rows, list):
        raise ValueError(f"{source} is not a JSON array of instrument rows")
    out = []
    for row in rows:
        try:
            out.append(_from_row(row))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    if not out:
        raise ValueError(f"{source} has no instrument rows")
    return out


def guard_instruments(settings: Settings, clock: Clock | None = None) -> GuardInstruments:
    """The instruments a guard service knows: `INSTRUMENTS_URL` when set, else the shipped list (and in simulator
    mode the simulator's F&O contracts, generated the same way it does), listed again each trading day."""
    sim = settings.simulator_mode
    weekday = settings.fno_expiry_weekday

    def shipped(now: float) -> list[Instrument]:
        return load_instruments(settings.sim_extra_instruments if sim else 0, now=now, expiry_weekday=weekday, fno=sim)

    source = settings.instruments_url.strip()
    if not source:
        load = shipped
    else:
        verify = ssl.create_default_context(cafile=settings.tls_ca_file or None)

        def load(now: float) -> list[Instrument]:
            listed = read_instrument_file(source, verify=verify)
            logger.info(f"Read {len(listed)} instruments from {_shown(source)}")
            return listed

    clock = clock or SystemClock()
    return GuardInstruments(load, clock, fallback=lambda: shipped(clock.now()))


def _shown(source: str) -> str:
    """`source` without what may be a secret (a password in the URL, a signed query)."""
    parts = urlsplit(source)
    if not parts.hostname:
        return source
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=host, query=""))


def master_file_gz(instruments: Iterable[Instrument]) -> bytes:
    """The instruments as a gzipped JSON array, like Upstox's `complete.json.gz`."""
    body = json.dumps([i.master_row() for i in instruments], separators=(",", ":")).encode()
    return gzip.compress(body, mtime=0)
