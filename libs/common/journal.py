"""The closed journal's cap: `positions:closed` keeps the newest `JOURNAL_MAXLEN` closes; older ones move, oldest
first, to the `positions:closed:archive` stream (persisted with Redis like the journal). Nothing is dropped."""

from __future__ import annotations

from redis.asyncio import Redis

from libs.common import keys

MOVE_AT_MOST = 1000  # per call: one script call never holds Redis for long; the next call moves the rest

# KEYS: positions:closed, positions:closed:archive. ARGV: maxlen, at most this many to move.
_CAP = """
local excess = redis.call('LLEN', KEYS[1]) - tonumber(ARGV[1])
if excess <= 0 then return 0 end
local n = math.min(excess, tonumber(ARGV[2]))
local oldest = redis.call('LRANGE', KEYS[1], -n, -1)
for i = #oldest, 1, -1 do redis.call('XADD', KEYS[2], '*', 'record', oldest[i]) end
redis.call('LTRIM', KEYS[1], 0, -n - 1)
return n
"""


class JournalCap:
    """Moves closes beyond `maxlen` from the journal to its archive (atomically, in one script call)."""

    def __init__(self, redis: Redis, maxlen: int) -> None:
        self._maxlen = maxlen
        self._cap = redis.register_script(_CAP)

    async def enforce(self) -> int:
        """Move the oldest closes beyond `maxlen` (at most `MOVE_AT_MOST`) to the archive; returns how many moved.
        Raises RedisError."""
        moved = await self._cap(keys=[keys.CLOSED_JOURNAL, keys.CLOSED_ARCHIVE], args=[self._maxlen, MOVE_AT_MOST])
        return int(moved)
