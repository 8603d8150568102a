"""Upstox's rate limits: several rolling windows per token (per second and per minute), real monotonic time."""

from __future__ import annotations

import time
from collections import deque


class RateLimiter:
    """At most `limit` events per key in every rolling window of `(seconds, limit)` (limit 0 = unlimited)."""

    def __init__(self, *windows: tuple[float, int]) -> None:
        self.windows = [(seconds, limit) for seconds, limit in windows if limit > 0]
        self._events: dict[str, deque[float]] = {}

    def allow(self, key: str) -> bool:
        """Count one event for `key` and say whether it is within every window; a refused event is not counted."""
        if not self.windows:
            return True
        now = time.monotonic()
        longest = max(seconds for seconds, _ in self.windows)
        events = self._events.setdefault(key, deque())
        while events and now - events[0] >= longest:
            events.popleft()
        for seconds, limit in self.windows:
            if sum(1 for t in reversed(events) if now - t < seconds) >= limit:
                return False
        events.append(now)
        return True

    def clear(self) -> None:
        self._events.clear()
