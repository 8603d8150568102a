"""Client-side pacing under the broker's published rate limits, so a burst of closes waits for its turn
instead of collecting 429s (Upstox: order calls 10/s and 500/min, other calls 50/s and 500/min per user).

Closes come first: calls made in the background (the safety-net keeper placing and modifying GTTs) may use only
a share of every window, so a close never queues behind them (a GTT refused and retried, or a hundred positions
registered at once, used to hold a close's order back for a whole window)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar

_IN_FLIGHT_POLL_S = 0.05  # every slot is taken by a call still waiting for its answer: look again this soon
_background: ContextVar[bool] = ContextVar("pacing_background", default=False)


@contextlib.contextmanager
def in_background(background: bool = True) -> Iterator[None]:
    """Broker calls made inside are background calls (`True`) or a close's (`False`: a close started from a
    background task, say for a GTT that fired, goes first again)."""
    token = _background.set(background)
    try:
        yield
    finally:
        _background.reset(token)


class Pacer:
    """At most `limit` calls in every rolling window of `(seconds, limit)`. Real monotonic time (rate limits
    follow the wall, not an injected market clock).

    A call counts from when its answer came back, the latest moment the broker can have counted it, and a call
    still in flight counts as happening now: stamping a call when it was queued let a loaded client (or a slow
    network) deliver two windows' worth of calls inside one of the broker's, which answered 429.
    """

    def __init__(self, *windows: tuple[float, int], background_share: float = 1.0) -> None:
        self._windows = [(seconds, limit) for seconds, limit in windows if limit > 0]
        self._longest = max((seconds for seconds, _ in self._windows), default=0.0)
        # Slots of each window a background call leaves to closes (at least one when the share is below 1).
        self._held_back = [0 if background_share >= 1 else max(1, limit - int(limit * background_share))
                           for _, limit in self._windows]  # fmt: skip
        self._answered: deque[float] = deque()  # monotonic times the answers of recent calls came back
        self._in_flight = 0
        # One queue per kind, so a background call waiting for its share never holds a close back.
        self._locks = {False: asyncio.Lock(), True: asyncio.Lock()}

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Make one call inside: entered when it may go out now, counted until (and from) its answer."""
        await self._take(_background.get())
        try:
            yield
        finally:
            self._in_flight -= 1
            self._answered.append(time.monotonic())

    async def _take(self, background: bool) -> None:
        async with self._locks[background]:
            while True:
                now = time.monotonic()
                while self._answered and now - self._answered[0] >= self._longest:
                    self._answered.popleft()
                delay_s = max(
                    (
                        self._free_in(now, seconds, limit - (held_back if background else 0))
                        for (seconds, limit), held_back in zip(self._windows, self._held_back, strict=True)
                    ),
                    default=0.0,
                )
                if delay_s <= 0:
                    self._in_flight += 1
                    return
                await asyncio.sleep(delay_s)

    def _free_in(self, now: float, seconds: float, limit: int) -> float:
        room = limit - self._in_flight
        if room <= 0:
            return _IN_FLIGHT_POLL_S
        recent = [t for t in self._answered if now - t < seconds]
        return 0.0 if len(recent) < room else recent[-room] + seconds - now
