"""Background load, in its own process: 100-tick frames through `PriceCache.write_frame` at a steady rate.

`python -m bench.load REDIS_URL TICKS_PER_S DURATION_S SYMBOL [SYMBOL ...]` (or `@FILE` with one symbol
a line). Prices stay at 1000.00 ± 1 % so they cross no level. It also plays a live feed for the monitor:
`feed:status` connected and a fresh `heartbeat:feed`, as the real feed would write them.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time

from libs.common import keys
from libs.common.clock import SystemClock
from libs.common.heartbeat import beat
from libs.common.models import FeedState, FeedStatus
from libs.common.price_cache import PriceCache, Tick
from libs.common.redis_client import create_redis
from libs.common.settings import Settings

TICKS_PER_FRAME = 100
NEUTRAL_PRICE = 1000.0


async def play_live_feed(settings: Settings, symbols: int) -> None:
    """Write `feed:status` as connected and beat `heartbeat:feed` (what a live feed shows)."""
    redis = create_redis(settings)
    now = time.time()
    status = FeedStatus(
        state=FeedState.LIVE,
        connected=True,
        subscribed_symbols=symbols,
        last_message_at=now,
        last_data_at=now,
        market_open=True,
        updated_at=now,
    )
    try:
        await redis.hset(keys.FEED_STATUS, mapping=status.to_redis())  # type: ignore[misc]
        await beat(redis, "feed", settings, SystemClock())
    finally:
        await redis.aclose()


async def run(redis_url: str, ticks_per_s: int, duration_s: float, symbols: list[str]) -> int:
    settings = Settings(_env_file=None, redis_url=redis_url, heartbeat_ttl_s=30)  # type: ignore[call-arg]
    redis = create_redis(settings)
    cache = PriceCache(redis, settings.price_cache_ttl_s)
    rng = random.Random(3)
    interval_s = TICKS_PER_FRAME / max(1, ticks_per_s)
    written = 0
    pos = 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    next_at = start
    next_beat = start
    try:
        while loop.time() - start < duration_s:
            if loop.time() >= next_beat:
                await play_live_feed(settings, len(symbols))
                next_beat = loop.time() + 1.0
            ticks = []
            for _ in range(TICKS_PER_FRAME):
                sym = symbols[pos % len(symbols)]
                pos += 1
                price = NEUTRAL_PRICE * (1 + rng.uniform(-0.01, 0.01))
                ticks.append(Tick(sym, "NSE_EQ|" + sym, f"{price:.2f}"))
            await cache.write_frame(ticks, time.time())
            written += len(ticks)
            next_at += interval_s
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_at = loop.time()  # behind: do not burst to catch up
    finally:
        await redis.aclose()
    return written


def main(argv: list[str]) -> None:
    url, rate, duration = argv[0], int(argv[1]), float(argv[2])
    symbols = argv[3:]
    if len(symbols) == 1 and symbols[0].startswith("@"):
        with open(symbols[0][1:], encoding="utf-8") as f:
            symbols = [line.strip() for line in f if line.strip()]
    written = asyncio.run(run(url, rate, duration, symbols))
    print(f"load: {written} ticks in {duration}s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
