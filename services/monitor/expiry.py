"""Expiry day for F&O positions: a `[WARNING]` and an `expiry_warning` event `FNO_EXPIRY_WARN_MIN` before 15:30
IST while a contract expiring today is still guarded, and an `[ERROR]` with an `expired_open` event once it
has stopped trading with the position still open. After 15:30 its instrument no longer ticks and the broker
refuses orders for it (exchange settlement takes over): the guard must say so, never drop it quietly.
Each is said once per position (per process: a restarted monitor says it again, which errs on the loud side).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from loguru import logger

from libs.common.clock import Clock
from libs.common.expiry import Expiring, expiring_today
from libs.common.instruments import InstrumentIndex
from libs.common.models import Position
from libs.common.positions import PositionStore

# Positions looked up per loop turn (about 1 us each): the tick path waits while one turn runs, and a single pass
# over 10,000 positions held the monitor's loop for 6-10 ms.
CHUNK = 500


class ExpiryWatch:
    def __init__(
        self, store: PositionStore, index: InstrumentIndex, clock: Clock, *, warn_min: float, chunk: int = CHUNK
    ) -> None:
        self._store = store
        self._chunk = chunk
        self._index = index
        self._clock = clock
        self._warn_s = warn_min * 60
        self._warned: set[tuple[str, float]] = set()  # (symbol, opened_at): one position, not one symbol
        self._reported: set[tuple[str, float]] = set()

    async def check(self, open_positions: Sequence[Position]) -> None:
        now = self._clock.now()
        expiring: list[Expiring] = []
        for start in range(0, len(open_positions), self._chunk):
            if start:
                await asyncio.sleep(0)  # let tick notices through between chunks
            expiring += expiring_today(open_positions[start : start + self._chunk], self._index, now)
        for item in sorted(expiring, key=lambda e: e.position.symbol):
            position = item.position
            ident = (position.symbol, position.opened_at)
            left_s = item.trading_ends - now
            data = {"quantity": position.quantity, "side": str(position.side), "trading_ends": item.trading_ends}
            if left_s <= 0 and ident not in self._reported:
                self._reported.add(ident)
                logger.error(
                    f"{position.symbol} expired at 15:30 IST with the position still open ({position.quantity} "
                    f"{position.side}): it no longer trades; check the settlement with the broker"
                )
                await self._store.publish_event("expired_open", position.symbol, **data)
            elif 0 < left_s <= self._warn_s and ident not in self._warned:
                self._warned.add(ident)
                logger.warning(
                    f"{position.symbol} expires today: trading ends at 15:30 IST in {left_s / 60:.0f} min and the "
                    f"position is still open ({position.quantity} {position.side})"
                )
                await self._store.publish_event(
                    "expiry_warning", position.symbol, minutes_left=int(left_s // 60), **data
                )
