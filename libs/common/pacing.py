"""Client-side pacing under the broker's published rate limits, so a burst of closes waits for its turn
instead of collecting 429s (Upstox: order calls 10/s and 500/min, other calls 50/s and 500/min per user)."""

from __future__ import annotations

import asyncio
import time
from collections import deque


class Pacer:
    """At most `limit` calls in every rolling window of `(seconds, limit)`; `wait()` takes a slot, sleeping
    until one is free. Real monotonic time (rate limits follow the wall, not an injected market clock)."""

    def __init__(self, *windows: tuple[float, int]) -> None:
        self._windows = [(seconds, limit) for seconds, limit in windows if limit > 0]
        self._longest = max((seconds for seconds, _ in self._windows), default=0.0)
        self._calls: deque[float] = deque()
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        """Return when a call may go out now (and count it)."""
        async with self._lock:
            while True:
                now = time.monotonic()
                while self._calls and now - self._calls[0] >= self._longest:
                    self._calls.popleft()
                delay_s = max((self._free_in(now, seconds, limit) for seconds, limit in self._windows), default=0.0)
                if delay_s <= 0:
                    self._calls.append(now)
                    return
                await asyncio.sleep(delay_s)

    def _free_in(self, now: float, seconds: float, limit: int) -> float:
        recent = [t for t in self._calls if now - t < seconds]
        return 0.0 if len(recent) < limit else recent[-limit] + seconds - now
