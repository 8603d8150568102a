"""Reading a stream through the `alerts` consumer group: new entries, and entries a dead consumer left pending."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from libs.common import keys

Entry = tuple[str, dict[str, str]]


async def ensure_group(redis: Redis, stream: str, start_id: str) -> None:
    """Create the group on `stream` reading from `start_id` ("$": only what comes next), if it is missing."""
    try:
        await redis.xgroup_create(stream, keys.ALERTS_GROUP, id=start_id, mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def read_new(redis: Redis, stream: str, consumer: str, count: int, block_ms: int) -> list[Entry]:
    """Entries never delivered to the group, now owned (pending) by `consumer`; waits up to `block_ms`."""
    reply: Any = await redis.xreadgroup(keys.ALERTS_GROUP, consumer, {stream: ">"}, count=count, block=block_ms)
    return _entries(reply[0][1]) if reply else []


async def read_own(redis: Redis, stream: str, consumer: str) -> list[Entry]:
    """Entries pending for `consumer` itself (read before, not acknowledged)."""
    reply: Any = await redis.xreadgroup(keys.ALERTS_GROUP, consumer, {stream: "0"}, count=10_000)
    return _entries(reply[0][1]) if reply else []


async def reclaim(redis: Redis, stream: str, consumer: str, min_idle_s: float) -> list[Entry]:
    """Take over entries pending longer than `min_idle_s` (their consumer crashed or hangs)."""
    out: list[Entry] = []
    cursor = "0-0"
    while True:
        reply: Any = await redis.xautoclaim(stream, keys.ALERTS_GROUP, consumer, int(min_idle_s * 1000), cursor)
        cursor = str(reply[0])
        out.extend(_entries(reply[1]))
        if cursor == "0-0":
            return out


async def forget_gone(redis: Redis, stream: str, min_idle_s: float) -> None:
    """Remove consumers that hold nothing and have not read for `min_idle_s` (each process is a new consumer)."""
    for consumer in await redis.xinfo_consumers(stream, keys.ALERTS_GROUP):
        if int(consumer["pending"]) == 0 and int(consumer["idle"]) >= min_idle_s * 1000:
            await redis.xgroup_delconsumer(stream, keys.ALERTS_GROUP, consumer["name"])


async def touch(redis: Redis, stream: str, consumer: str, ids: list[Any]) -> None:
    """Reset the idle time of entries `consumer` is still working on, so nobody reclaims them."""
    if ids:
        await redis.xclaim(stream, keys.ALERTS_GROUP, consumer, 0, ids, justid=True)


def _entries(rows: Any) -> list[Entry]:
    # Entries trimmed from the stream while pending come back without fields.
    return [(str(entry_id), dict(fields or {})) for entry_id, fields in rows]
