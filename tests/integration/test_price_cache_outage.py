"""A tick the feed could not store during a Redis outage is written later, never lost behind a vouch.

Found by the e2e Redis-restart scenario: a pinned (not ticking) price that moved while Redis was down
stayed at its old value, and vouching kept marking that old value current, so its SL never fired.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from redis.exceptions import RedisError

from libs.common import keys
from libs.common.price_cache import PriceCache, Tick, parse_tick_notice
from libs.common.redis_client import create_redis
from libs.common.settings import Settings
from tests.helpers import RedisServer, free_port

pytestmark = pytest.mark.integration

BOSCH = "NSE_EQ|INE323A01026"


async def test_ticks_lost_to_an_outage_are_written_by_the_next_vouch_or_frame(tmp_path: Path) -> None:
    server = RedisServer(free_port(), str(tmp_path), appendonly=True)
    server.start()
    settings = Settings(_env_file=None, redis_url=server.url, redis_retries=0, redis_connect_timeout_s=0.5)  # type: ignore[call-arg]
    redis = create_redis(settings)
    try:
        cache = PriceCache(redis, ttl_s=300)
        await cache.write_frame([Tick("BOSCHLTD", BOSCH, "720.00")], as_of=1000.0)
        server.stop()
        with pytest.raises(RedisError):
            await cache.write_frame([Tick("BOSCHLTD", BOSCH, "690.00")], as_of=1001.0)
        with pytest.raises(RedisError):
            await cache.write_frame([Tick("BOSCHLTD", BOSCH, "689.00")], as_of=1002.0)  # the newest wins
        server.start()
        pubsub = redis.pubsub()
        await pubsub.subscribe(keys.TICKS_CHANNEL)
        await cache.vouch(["BOSCHLTD"], as_of=1003.0)
        row = await redis.hgetall(keys.price("BOSCHLTD"))
        assert (row["ltp"], row["as_of"]) == ("689.00", "1003.0")  # not the old 720.00 vouched current
        deadline = time.monotonic() + 5
        notice = None
        while notice is None and time.monotonic() < deadline:
            notice = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        assert notice is not None and parse_tick_notice(notice["data"]) == (1003.0, {"BOSCHLTD": "689.00"})
        await pubsub.aclose()

        server.stop()
        with pytest.raises(RedisError):
            await cache.write_frame([Tick("BOSCHLTD", BOSCH, "680.00")], as_of=1004.0)
        server.start()
        await cache.write_frame([Tick("KAYNES", "NSE_EQ|INE918Z01012", "204.10")], as_of=1005.0)
        assert (await redis.hget(keys.price("BOSCHLTD"), "ltp")) == "680.00"  # went out with the next frame
        assert await cache.vouch(["BOSCHLTD"], as_of=1006.0) == 1  # nothing left over: a plain vouch
        assert (await redis.hget(keys.price("BOSCHLTD"), "ltp")) == "680.00"
    finally:
        await redis.aclose()
        server.stop()
