"""Decoded ticks to Redis without making the WebSocket wait for Redis.

The receive loop hands each frame's ticks to `FrameWriter.add` and goes on decoding; the writer task
sends them with one `write_frame` call (one script call, one notice). Frames that arrive while a write is
in flight are merged into the next call, so under load the calls get bigger instead of queueing up, and
decoding (this process) overlaps with the script (Redis). At a normal rate each frame is written at once.
"""

from __future__ import annotations

import asyncio

from loguru import logger
from redis.exceptions import RedisError

from libs.common.clock import Clock
from libs.common.feed_lease import FencedOut
from libs.common.price_cache import PriceCache, Tick

_COLLAPSE_ABOVE = 20_000  # pending ticks beyond this keep only the newest per symbol (Redis far behind)
# One script call blocks Redis while it runs: cap it so the monitor's and api's reads wait at most a few ms.
MAX_TICKS_PER_CALL = 2_000
_WARN_EVERY_S = 5.0


class FrameWriter:
    """Writes ticks in arrival order; run `run()` as a task."""

    def __init__(self, cache: PriceCache, clock: Clock) -> None:
        self._cache = cache
        self._clock = clock
        self._pending: list[Tick] = []
        self._as_of = 0.0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._warned_at = -1e9
        self.frames_written = 0

    def add(self, ticks: list[Tick], as_of: float) -> None:
        """Queue one frame's ticks, received at `as_of` (epoch s)."""
        pending = self._pending
        pending += ticks
        if len(pending) > _COLLAPSE_ABOVE:
            self._pending = list({t.symbol: t for t in pending}.values())
        self._as_of = as_of
        self._idle.clear()
        self._wake.set()

    def discard(self) -> None:
        """Drop ticks not yet handed to Redis (they belong to an earlier leadership)."""
        self._pending.clear()

    async def drained(self) -> None:
        """Wait until everything added so far has been handed to Redis (or failed)."""
        await self._idle.wait()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                self._idle.set()
                continue
            ticks = self._pending[:MAX_TICKS_PER_CALL]
            del self._pending[:MAX_TICKS_PER_CALL]
            try:
                await self._cache.write_frame(ticks, self._as_of)
            except FencedOut:  # refused inside Redis: another feed leads now; this one is stepping down
                self._pending.clear()
                self._warn("Prices not written: this feed no longer holds the feed lease (fenced)")
            except RedisError as exc:  # PriceCache keeps the ticks and writes them with the next call
                self._warn(f"Cannot write prices to Redis ({type(exc).__name__}); will retry with the next frame")
            self.frames_written += 1
            if self._pending:
                self._wake.set()
            else:
                self._idle.set()

    def _warn(self, message: str) -> None:
        now = self._clock.monotonic()
        if now - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = now
            logger.warning(message)
