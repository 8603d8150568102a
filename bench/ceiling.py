"""The ceiling of this machine for the feed's Redis writes, measured in the same run as the feed.

Three figures, from the bare server up to the project's own write path:
- `redis-benchmark -P 100` of one HSET with the price hash's fields (C client, pipelined: the server's ceiling);
- a minimal pipelined redis-py writer doing the feed's per-tick work (HSET 5 fields + EXPIRE + ZADD, one
  PUBLISH per 100 ticks): the ceiling for a Python writer on one core;
- `PriceCache.write_frame` (one script call per 100-tick frame, what the feed runs), with no decoding.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from typing import Any

from redis import Redis as SyncRedis

from libs.common import keys
from libs.common.price_cache import PriceCache, Tick
from libs.common.redis_client import create_redis
from libs.common.settings import Settings

TICKS_PER_FRAME = 100
COMMANDS_PER_TICK = 3  # HSET + EXPIRE + ZADD


def _symbols(count: int) -> list[str]:
    return [f"BENCH{i:05d}" for i in range(count)]


def pipelined_writer(redis_url: str, symbols: int, duration_s: float) -> dict[str, Any]:
    """Minimal redis-py writer (hiredis), one pipeline per 100-tick frame; ticks/s and Redis ops/s."""
    client = SyncRedis.from_url(redis_url, decode_responses=True)
    names = _symbols(symbols)
    frames = 0
    ticks = 0
    pos = 0
    deadline = time.perf_counter() + duration_s
    t0 = time.perf_counter()
    try:
        while time.perf_counter() < deadline:
            now = repr(time.time())
            pipe = client.pipeline(transaction=False)
            for _ in range(TICKS_PER_FRAME):
                sym = names[pos % symbols]
                pos += 1
                key = keys.PRICE_PREFIX + sym
                fields = {"ltp": "575.00", "instrument_key": sym, "ltt_ms": "1", "as_of": now, "received_at": now}
                pipe.hset(key, mapping=fields)
                pipe.expire(key, 300)
                pipe.zadd(keys.PRICE_INDEX, {sym: float(now)})
            pipe.publish("bench:ticks", now)
            pipe.execute()
            frames += 1
            ticks += TICKS_PER_FRAME
        wall = time.perf_counter() - t0
    finally:
        client.delete(keys.PRICE_INDEX, *(keys.PRICE_PREFIX + s for s in names[:1000]))
        client.close()
    return {
        "ticks_per_s": round(ticks / wall),
        "ops_per_s": round((ticks * COMMANDS_PER_TICK + frames) / wall),
        "frames": frames,
        "duration_s": round(wall, 2),
    }


def redis_benchmark(port: int, requests: int) -> dict[str, Any] | None:
    """`redis-benchmark -P 100` of the price HSET and of PUBLISH; None when the tool is not installed."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    out: dict[str, Any] = {}
    runs = {
        "hset_ops_per_s": [
            "hset",
            "price:BENCH__rand_int__",
            "ltp",
            "575.00",
            "instrument_key",
            "NSE_EQ|X",
            "as_of",
            "1.0",
            "received_at",
            "1.0",
            "ltt_ms",
            "1",
        ],
        "publish_ops_per_s": ["publish", "bench:ticks", "x" * 64],
    }
    for name, command in runs.items():
        proc = subprocess.run(
            [
                binary,
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-P",
                "100",
                "-n",
                str(requests),
                "-r",
                "5000",
                "-q",
                "--csv",
                *command,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        lines = [line for line in proc.stdout.splitlines() if line and not line.startswith('"test"')]
        if not lines:
            continue
        cells = [c.strip('"') for c in lines[-1].split(",")]
        out[name] = round(float(cells[1]))
    # One tick costs three commands in our write (HSET, EXPIRE, ZADD): a generous ticks/s equivalent.
    if "hset_ops_per_s" in out:
        out["ticks_per_s_equivalent"] = round(out["hset_ops_per_s"] / COMMANDS_PER_TICK)
    return out


async def library_write_path(settings: Settings, symbols: int, duration_s: float) -> dict[str, Any]:
    """`PriceCache.write_frame` in a loop (the feed's write without decoding), frames of 100 ticks."""
    redis = create_redis(settings)
    cache = PriceCache(redis, settings.price_cache_ttl_s)
    names = _symbols(symbols)
    frames_ticks = [
        [
            Tick(names[(f * TICKS_PER_FRAME + i) % symbols], "NSE_EQ|X", "575.00", 1700000000000, "570.00")
            for i in range(TICKS_PER_FRAME)
        ]
        for f in range(max(1, symbols // TICKS_PER_FRAME))
    ]
    ticks = 0
    t0 = time.perf_counter()
    deadline = t0 + duration_s
    try:
        while time.perf_counter() < deadline:
            for frame in frames_ticks:
                await cache.write_frame(frame, time.time())
                ticks += len(frame)
        wall = time.perf_counter() - t0
        await redis.delete(keys.PRICE_INDEX)
    finally:
        await redis.aclose()
    return {"ticks_per_s": round(ticks / wall), "duration_s": round(wall, 2)}


def measure(redis_url: str, port: int, settings: Settings, duration_s: float, quick: bool) -> dict[str, Any]:
    """All three ceilings, one after the other on an idle machine."""
    writer = pipelined_writer(redis_url, 5000, duration_s)
    bench = redis_benchmark(port, 200_000 if quick else 1_000_000)
    library = asyncio.run(library_write_path(settings, 5000, duration_s))
    return {"pipelined_redis_py": writer, "redis_benchmark": bench, "library_write_frame": library}
