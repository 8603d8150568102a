"""Injectable time: the wall clock in production, a hand-driven clock in tests.

All times are epoch seconds (float). API timestamps are rendered in IST (+05:30).
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from typing import Protocol

IST = timezone(timedelta(hours=5, minutes=30), name="IST")


class Clock(Protocol):
    """A source of time. `now()` is epoch seconds; `monotonic()` only measures intervals."""

    def now(self) -> float: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock:
    """A clock that moves only when told to; `sleep` advances it instead of waiting."""

    def __init__(self, start: float = 1_767_000_000.0) -> None:
        self._now = start
        self._mono = 0.0

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds` (must not be negative)."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._now += seconds
        self._mono += seconds

    async def sleep(self, seconds: float) -> None:
        self.advance(max(seconds, 0.0))
        await asyncio.sleep(0)


def to_ist(epoch_s: float) -> datetime:
    """Epoch seconds as an aware datetime in IST."""
    return datetime.fromtimestamp(epoch_s, tz=IST)


def ist_iso(epoch_s: float) -> str:
    """Epoch seconds as ISO 8601 with the +05:30 offset, to the second (the guide's shape)."""
    return to_ist(epoch_s).isoformat(timespec="seconds")
