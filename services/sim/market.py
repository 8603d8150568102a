"""The simulated market: a seeded random walk per instrument, pins, and the NSE segment status.

Prices are integer paise, always on the instrument's tick and inside its daily band (a pinned price set
through `/sim/price` is the one exception: it is a control, not a trade). The walk is driven by `step()`;
the same seed and the same number of steps give the same prices, whatever is pinned or halted (both still
consume their random draws, so they never shift the other instruments' paths). A pinned instrument keeps
trading at its pinned price (fresh trade time and volume, like a stock holding a level); a halted one does not
trade at all while the others go on (an exchange halt of one instrument, `POST /sim/instrument`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import time as dtime

from libs.common.clock import Clock, to_ist
from libs.common.fno import is_expired
from libs.common.instruments import Instrument
from libs.common.money import Paise
from libs.common.proto import MarketDataFeedV3_pb2 as pb
from services.sim.derivatives import Derivatives

SEGMENTS = (
    "NSE_EQ",
    "NSE_FO",
    "NSE_INDEX",
    "NSE_COM",
    "NCD_FO",
    "BSE_EQ",
    "BSE_FO",
    "BSE_INDEX",
    "BCD_FO",
    "MCX_FO",
    "MCX_INDEX",
)
STATUS_NAMES = tuple(pb.MarketStatus.keys())

# NSE session edges on the IST clock (the reference's inferred mapping of the feed's MarketStatus enum).
_SESSION = (
    (dtime(9, 0), "PRE_OPEN_START"),
    (dtime(9, 8), "PRE_OPEN_END"),
    (dtime(9, 15), "NORMAL_OPEN"),
    (dtime(15, 30), "NORMAL_CLOSE"),
    (dtime(15, 40), "CLOSING_START"),
    (dtime(16, 0), "CLOSING_END"),
)
_STEPS = (-3, -2, -1, -1, 1, 1, 2, 3)
_QTYS = tuple(range(1, 51))


def nse_status_at(epoch_s: float) -> str:
    """The NSE equity session status at `epoch_s` (IST clock, Monday-Friday; no holiday calendar)."""
    now = to_ist(epoch_s)
    if now.weekday() >= 5:
        return "CLOSING_END"
    status = "CLOSING_END"  # before 09:00 the previous session is over
    for start, name in _SESSION:
        if now.time() >= start:
            status = name
    return status


@dataclass(slots=True)
class Quote:
    """Mutable market state of one instrument (paise, epoch ms)."""

    ltp: Paise
    close: Paise
    open: Paise
    high: Paise
    low: Paise
    ltt_ms: int = 0
    ltq: int = 0
    vtt: int = 0
    turnover_paise: int = 0  # for the average traded price
    minute_start_ms: int = 0
    minute_ohlc: list[int] = field(default_factory=list)  # forming 1-minute bar: o, h, l, c
    minute_vol: int = 0
    last_minute: tuple[int, int, int, int, int, int] | None = None  # completed bar: o, h, l, c, vol, ts_ms


TickListener = Callable[[list[int]], None]
StatusListener = Callable[[], None]


class Market:
    """Prices, pins and segment status of the simulated exchange.

    `listeners` get the indices (into `instruments`) of instruments whose price just changed;
    `status_listeners` are called after the segment status changed.
    """

    def __init__(
        self,
        instruments: list[Instrument],
        *,
        seed: int,
        clock: Clock,
        follow_market_hours: bool = False,
        moves_per_step: int = 0,
    ) -> None:
        self.instruments = instruments
        self.index = {inst.instrument_key: i for i, inst in enumerate(instruments)}
        self.by_symbol = {inst.trading_symbol: i for i, inst in enumerate(instruments)}
        self.seed = seed
        self.clock = clock
        self.follow_market_hours = follow_market_hours
        self.derivatives = Derivatives(instruments)
        # The random walk moves the cash instruments; F&O contracts follow their underlying.
        self._walk = [i for i, inst in enumerate(instruments) if not inst.is_derivative]
        self.moves_per_step = moves_per_step or max(1, len(self._walk) // 10)
        self.listeners: list[TickListener] = []
        self.status_listeners: list[StatusListener] = []
        self.quotes: list[Quote] = []
        self._bands = [inst.band_paise for inst in instruments]
        self._is_index = [inst.is_index for inst in instruments]
        self.pinned: set[int] = set()
        self.halted: set[int] = set()
        self.forced_status: dict[str, str] = {}
        self.steps = 0
        self._rng = random.Random(seed)
        self._last_status: dict[str, str] = {}
        self.reset()

    # --- state ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Back to the previous close for every instrument, same seed, no pins, no forced status."""
        self._rng = random.Random(self.seed)
        self.pinned.clear()
        self.halted.clear()
        self.forced_status.clear()
        self.steps = 0
        now_ms = self._now_ms()
        self.quotes = [_opening_quote(i.close_price_paise, now_ms) for i in self.instruments]
        self._follow(list(self.derivatives.followers), now_ms)
        self._last_status = self.segment_status()

    def list_more(self, contracts: list[Instrument]) -> list[int]:
        """Start trading the contracts of a new day not listed yet (at their model price); their indices."""
        fresh = [c for c in contracts if c.instrument_key not in self.index]
        start = len(self.instruments)
        now_ms = self._now_ms()
        for idx, inst in enumerate(fresh, start=start):
            self.instruments.append(inst)
            self.index[inst.instrument_key] = idx
            self.by_symbol.setdefault(inst.trading_symbol, idx)
            self._bands.append(inst.band_paise)
            self._is_index.append(inst.is_index)
            self.quotes.append(_opening_quote(inst.close_price_paise, now_ms))
        if fresh:
            self.derivatives = Derivatives(self.instruments)
            self._follow(list(self.derivatives.followers), now_ms)
        return list(range(start, len(self.instruments)))

    def _now_ms(self) -> int:
        return int(self.clock.now() * 1000)

    def expired(self, inst: Instrument) -> bool:
        """True once an F&O contract stopped trading (15:30 IST of its expiry date)."""
        return is_expired(inst, self.clock.now())

    def ltp_paise(self, instrument_key: str) -> Paise | None:
        """Current price of an instrument key, or None when unknown."""
        idx = self.index.get(instrument_key)
        return None if idx is None else self.quotes[idx].ltp

    # --- status --------------------------------------------------------------------------------
    def segment_status(self) -> dict[str, str]:
        """Status name per segment: forced ones win, else NSE hours (or always open)."""
        base = nse_status_at(self.clock.now()) if self.follow_market_hours else "NORMAL_OPEN"
        return {seg: self.forced_status.get(seg, base) for seg in SEGMENTS}

    def is_open(self, segment: str) -> bool:
        """True when `segment` trades now (status NORMAL_OPEN)."""
        return self.segment_status().get(segment, "NORMAL_OPEN") == "NORMAL_OPEN"

    def force_status(self, status: str | None, segment: str | None = None) -> None:
        """Force a segment's status (all segments when `segment` is None); None returns to the clock."""
        if status is not None and status not in STATUS_NAMES:
            raise ValueError(f"unknown market status {status!r}")
        targets = [segment] if segment else list(SEGMENTS)
        for seg in targets:
            if status is None:
                self.forced_status.pop(seg, None)
            else:
                self.forced_status[seg] = status
        self.check_status()

    def check_status(self) -> bool:
        """Notify the status listeners if the status changed since the last check; True if it did."""
        current = self.segment_status()
        if current == self._last_status:
            return False
        self._last_status = current
        for listener in list(self.status_listeners):
            listener()
        return True

    # --- moves ---------------------------------------------------------------------------------
    def step(self) -> list[int]:
        """Move `moves_per_step` instruments one random walk step; return the indices that changed.

        Instruments of a segment that is not NORMAL_OPEN do not move (no live ticks while closed).
        """
        self.steps += 1
        walk = self._walk
        rng = self._rng
        chosen = walk if self.moves_per_step >= len(walk) else rng.sample(walk, self.moves_per_step)
        draws = rng.choices(_STEPS, k=len(chosen))
        qtys = rng.choices(_QTYS, k=len(chosen))
        status = self.segment_status()
        closed = {seg for seg, name in status.items() if name != "NORMAL_OPEN"}
        now_ms = self._now_ms()
        pinned = self.pinned
        halted = self.halted
        is_index = self._is_index
        instruments = self.instruments
        quotes = self.quotes
        changed: list[int] = []
        for idx, draw, qty in zip(chosen, draws, qtys, strict=True):
            if idx in halted:
                continue
            inst = instruments[idx]
            if closed and inst.segment in closed:
                continue
            ltp = quotes[idx].ltp
            if idx in pinned:  # holds its level: trades again at the pinned price
                self._trade(idx, ltp, 0 if is_index[idx] else qty, now_ms)
                changed.append(idx)
                continue
            low, high = self._bands[idx]
            price = Paise(ltp + draw * inst.tick_size_paise)
            if price > high or price < low:  # bounce off the circuit limit
                price = Paise(min(max(ltp - draw * inst.tick_size_paise, low), high))
            self._trade(idx, price, 0 if is_index[idx] else qty, now_ms)
            changed.append(idx)
        changed += self._follow(changed, now_ms, closed)
        self._notify(changed)
        return changed

    def _follow(self, moved: list[int], now_ms: int, closed: set[str] | None = None) -> list[int]:
        """Reprice the contracts of every moved underlying; the indices whose price changed."""
        followers = self.derivatives.followers
        changed: list[int] = []
        for und in moved:
            for idx in followers.get(und, ()):
                inst = self.instruments[idx]
                if idx in self.pinned or (closed and inst.segment in closed):
                    continue
                price = self.derivatives.fair(idx, self.quotes[und].ltp, now_ms / 1000)
                if price is not None and price != self.quotes[idx].ltp:
                    self._trade(idx, price, inst.lot_size, now_ms)
                    changed.append(idx)
        return changed

    def set_price(self, symbol: str, price_paise: Paise) -> int:
        """Set `symbol`'s price outright and pin it (no band or tick check); ticks go out at once."""
        idx = self.by_symbol.get(symbol)
        if idx is None:
            raise KeyError(symbol)
        if price_paise <= 0:
            raise ValueError("price must be positive")
        self.pinned.add(idx)
        inst = self.instruments[idx]
        now_ms = self._now_ms()
        self._trade(idx, price_paise, 0 if inst.is_index else inst.lot_size, now_ms)
        self._notify([idx, *self._follow([idx], now_ms)])
        return idx

    def release(self, symbol: str) -> None:
        """Let the random walk move `symbol` again."""
        idx = self.by_symbol.get(symbol)
        if idx is None:
            raise KeyError(symbol)
        self.pinned.discard(idx)

    def halt(self, symbol: str, halted: bool) -> None:
        """Stop (or resume) all trading of `symbol`: no ticks while halted, the others go on."""
        idx = self.by_symbol.get(symbol)
        if idx is None:
            raise KeyError(symbol)
        if halted:
            self.halted.add(idx)
        else:
            self.halted.discard(idx)

    def record_fill(self, instrument_key: str, qty: int) -> None:
        """An order filled at the current price: count its volume (the price does not move)."""
        idx = self.index.get(instrument_key)
        if idx is not None:
            self._trade(idx, self.quotes[idx].ltp, qty, self._now_ms())

    def _trade(self, idx: int, price: Paise, qty: int, now_ms: int) -> None:
        q = self.quotes[idx]
        if now_ms - q.minute_start_ms >= 60000 or now_ms < q.minute_start_ms:
            o, h, lo, c = q.minute_ohlc
            q.last_minute = (o, h, lo, c, q.minute_vol, q.minute_start_ms)
            q.minute_start_ms = now_ms // 60000 * 60000
            q.minute_ohlc = [q.ltp, q.ltp, q.ltp, q.ltp]
            q.minute_vol = 0
        q.ltp = price
        if price > q.high:
            q.high = price
        elif price < q.low:
            q.low = price
        q.ltt_ms = now_ms
        q.ltq = qty
        if qty:
            q.vtt += qty
            q.turnover_paise += qty * price
            q.minute_vol += qty
        bar = q.minute_ohlc
        if price > bar[1]:
            bar[1] = price
        elif price < bar[2]:
            bar[2] = price
        bar[3] = price

    def _notify(self, changed: list[int]) -> None:
        if not changed:
            return
        for listener in list(self.listeners):
            listener(changed)


def _opening_quote(close_paise: Paise, now_ms: int) -> Quote:
    """A quote at the previous close, before the first trade of the day."""
    return Quote(
        ltp=close_paise,
        close=close_paise,
        open=close_paise,
        high=close_paise,
        low=close_paise,
        ltt_ms=now_ms,
        minute_start_ms=now_ms // 60000 * 60000,
        minute_ohlc=[close_paise] * 4,
    )
