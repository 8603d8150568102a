"""Frames read off the WebSocket, waiting for the decoder: the bounded queue that keeps reading first.

The reader only moves frames from the socket into this queue, so the socket is drained ahead of decoding and
writing and a pong (or the server's ping) is seen within a loop turn. The decoder takes one frame at a time
while the queue is short. When more than `max_frames` wait, it is behind: it takes them all, newest first, and
keeps only the newest tick per symbol (`decode(..., taken)`), counting the older ones as superseded. A price is
a level, not a flow: the newest tick of a symbol carries everything the monitor needs. Memory stays bounded:
at `HARD_CAP_FACTOR` x `max_frames` the reader waits for that catch-up, which takes the whole queue at once.
"""

from __future__ import annotations

import asyncio
from collections import deque

HARD_CAP_FACTOR = 4
Received = tuple[bytes | str, float]  # (the frame as read, arrival epoch s)


class Inbox:
    """A FIFO of received frames; `take()` hands out one, or the whole backlog once it is longer than the bound."""

    def __init__(self, max_frames: int) -> None:
        self.max_frames = max_frames
        self.cap = HARD_CAP_FACTOR * max_frames
        self._frames: deque[Received] = deque()
        self._ready = asyncio.Event()
        self._drained = asyncio.Event()

    @property
    def full(self) -> bool:
        """At the memory bound (`HARD_CAP_FACTOR` x the catch-up bound): the reader waits for `drained()`."""
        return len(self._frames) >= self.cap

    async def drained(self) -> None:
        self._drained.clear()
        while self.full:
            await self._drained.wait()
            self._drained.clear()

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, frame: bytes | str, at: float) -> None:
        self._frames.append((frame, at))
        self._ready.set()

    async def take(self) -> list[Received]:
        """The next frame (oldest first), or every waiting frame when the decoder is behind."""
        frames = self._frames
        while not frames:
            self._ready.clear()
            await self._ready.wait()
        if len(frames) > self.max_frames:
            backlog = list(frames)
            frames.clear()
            self._drained.set()
            return backlog
        return [frames.popleft()]

    def clear(self) -> None:
        self._frames.clear()
        self._drained.set()
