from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from redis.asyncio import Redis

from libs.common import keys
from libs.common.clock import SystemClock
from libs.common.price_cache import PriceCache, Tick
from services.feed.writer import MAX_TICKS_PER_CALL, FrameWriter

pytestmark = pytest.mark.integration

BOSCH = "NSE_EQ|INE323A01026"


async def test_frames_arriving_during_a_write_are_merged_in_order(redis: Redis) -> None:
    writer = FrameWriter(PriceCache(redis, 300), SystemClock())
    task = asyncio.create_task(writer.run())
    try:
        for i in range(50):  # no await between frames: they pile up behind the first write
            writer.add([Tick("BOSCHLTD", BOSCH, f"{575 + i}.00", 1000 + i, "735.00" if i == 0 else None)], 10.0 + i)
        await writer.drained()
        row = await redis.hgetall(keys.price("BOSCHLTD"))
        assert (row["ltp"], row["ltt_ms"], row["cp"], row["as_of"]) == ("624.00", "1049", "735.00", "59.0")
        assert writer.frames_written < 50
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_vouch_never_moves_as_of_backwards(redis: Redis) -> None:
    cache = PriceCache(redis, 300)
    await cache.write_frame([Tick("BOSCHLTD", BOSCH, "575.00")], as_of=100.0)
    assert await cache.vouch(["BOSCHLTD", "NOPE"], as_of=90.0) == 1
    assert await redis.hget(keys.price("BOSCHLTD"), "as_of") == "100.0"
    await cache.vouch(["BOSCHLTD"], as_of=105.5)
    assert await redis.hget(keys.price("BOSCHLTD"), "as_of") == "105.5"
    assert await redis.zscore(keys.PRICE_INDEX, "BOSCHLTD") == 105.5
    assert not await redis.exists(keys.price("NOPE"))


class CountingCache(PriceCache):
    """Records the size of every script call."""

    def __init__(self, redis: Redis) -> None:
        super().__init__(redis, 300)
        self.calls: list[int] = []

    async def write_frame(self, ticks: Sequence[Tick], as_of: float, *, publish: bool = True) -> None:
        self.calls.append(len(ticks))
        await super().write_frame(ticks, as_of, publish=publish)


async def test_a_backlog_is_written_in_bounded_calls_so_redis_is_never_blocked_long(redis: Redis) -> None:
    cache = CountingCache(redis)
    writer = FrameWriter(cache, SystemClock())
    task = asyncio.create_task(writer.run())
    try:
        for frame in range(50):  # 5,000 distinct ticks arrive before the writer runs once
            writer.add([Tick(f"SIM{frame}_{i}", f"NSE_EQ|S{frame}_{i}", "1.00") for i in range(100)], 1.0)
        await writer.drained()
        assert sum(cache.calls) == 5000
        assert max(cache.calls) <= 2_000 == MAX_TICKS_PER_CALL
        assert await redis.zcard(keys.PRICE_INDEX) == 5000
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
