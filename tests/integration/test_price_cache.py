from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from libs.common import keys
from libs.common.models import FeedStatus, MalformedRecord
from libs.common.price_cache import PriceCache, Tick, parse_tick_notice
from tests.helpers import eventually

pytestmark = pytest.mark.integration

BOSCH = Tick("BOSCHLTD", "NSE_EQ|INE323A01026", "575.00", 1_767_000_000_000, "735.00")
KAYNES = Tick("KAYNES", "NSE_EQ|INE918Z01012", "204.10")


async def test_a_frame_lands_as_readable_hashes_with_expiry_and_index(redis: Redis) -> None:
    cache = PriceCache(redis, ttl_s=300)
    await cache.write_frame([BOSCH, KAYNES], as_of=1000.5)
    row = await redis.hgetall(keys.price("BOSCHLTD"))
    assert row == {
        "ltp": "575.00",
        "instrument_key": "NSE_EQ|INE323A01026",
        "ltt_ms": "1767000000000",
        "cp": "735.00",
        "as_of": "1000.5",
        "received_at": "1000.5",
    }
    assert 295 < await redis.ttl(keys.price("BOSCHLTD")) <= 300
    assert await cache.count(now=1001) == 2
    assert await cache.last_update() == 1000.5
    entries = await cache.read(["BOSCHLTD", "KAYNES", "NOPE"])
    bosch = entries["BOSCHLTD"]
    assert not isinstance(bosch, MalformedRecord)
    assert bosch is not None
    assert bosch.ltp == 57500
    assert bosch.cp == 73500
    assert entries["NOPE"] is None


async def test_a_partial_tick_keeps_the_fields_it_lacks(redis: Redis) -> None:
    cache = PriceCache(redis, ttl_s=300)
    await cache.write_frame([BOSCH], as_of=1.0)
    await cache.write_frame([Tick("BOSCHLTD", "NSE_EQ|INE323A01026", "576.00")], as_of=2.0)
    row = await redis.hgetall(keys.price("BOSCHLTD"))
    assert row["ltp"] == "576.00"
    assert row["cp"] == "735.00"


async def test_one_notice_per_frame(redis: Redis) -> None:
    cache = PriceCache(redis, ttl_s=300)
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.TICKS_CHANNEL)
    await cache.write_frame([BOSCH, KAYNES], as_of=5.0)
    msg = await eventually(lambda: pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1))
    assert parse_tick_notice(msg["data"]) == (5.0, {"BOSCHLTD": "575.00", "KAYNES": "204.10"})
    assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2) is None
    await pubsub.aclose()


async def test_vouch_refreshes_only_existing_prices(redis: Redis) -> None:
    cache = PriceCache(redis, ttl_s=300)
    await cache.write_frame([BOSCH], as_of=10.0)
    await redis.expire(keys.price("BOSCHLTD"), 5)
    assert await cache.vouch(["BOSCHLTD", "KAYNES"], as_of=20.0) == 1
    assert await redis.hget(keys.price("BOSCHLTD"), "as_of") == "20.0"
    assert await redis.ttl(keys.price("BOSCHLTD")) > 5
    assert not await redis.exists(keys.price("KAYNES"))


async def test_expired_prices_leave_the_count_and_the_index(redis: Redis) -> None:
    cache = PriceCache(redis, ttl_s=1)
    await cache.write_frame([BOSCH], as_of=100.0)
    await cache.write_frame([KAYNES], as_of=200.0)
    assert await cache.count(now=200.5) == 1
    assert await cache.newest(10, now=200.5) == [("KAYNES", 200.0)]
    assert await cache.trim_index(now=200.5) == 1
    await asyncio.sleep(1.1)
    assert await cache.read_one("BOSCHLTD") is None


async def test_malformed_price_hash_is_reported(redis: Redis) -> None:
    await redis.hset(keys.price("BAD"), mapping={"ltp": "x"})
    with pytest.raises(MalformedRecord):
        await PriceCache(redis, 300).read_one("BAD")


def test_feed_status_round_trip() -> None:
    status = FeedStatus(connected=True, subscribed_symbols=208, token_ok=None, dns_resolver="Google DNS")
    data = status.to_redis()
    assert data["connected"] == "1"
    assert data["token_ok"] == ""
    assert FeedStatus.from_redis(data) == status
    assert FeedStatus.from_redis({}).connected is False


async def test_a_vouch_over_many_symbols_covers_every_slice(redis: Redis) -> None:
    cache = PriceCache(redis, ttl_s=300)
    symbols = [f"SIMEQ{i:04d}" for i in range(1, 1001)]
    await cache.write_frame([Tick(s, f"NSE_EQ|{s}", "100.00") for s in symbols[:900]], as_of=10.0)
    assert await cache.vouch(symbols, as_of=20.0) == 900  # 10 slices; the last 100 symbols have no price
    as_ofs = {await redis.hget(keys.price(s), "as_of") for s in (symbols[0], symbols[499], symbols[899])}
    assert await cache.newest(1000, now=20.0) == [(s, 20.0) for s in reversed(symbols[:900])]  # the index moved too
    assert as_ofs == {"20.0"}
    assert not await redis.exists(keys.price(symbols[950]))


async def test_an_older_tick_after_a_newer_one_is_dropped_and_counted(redis: Redis) -> None:
    """Ticks never move backwards: a retried older tick (by exchange time) loses, in the writing script."""
    cache = PriceCache(redis, ttl_s=300)
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.TICKS_CHANNEL)
    newer = Tick("BOSCHLTD", "NSE_EQ|INE323A01026", "576.00", 2_000, None)
    older = Tick("BOSCHLTD", "NSE_EQ|INE323A01026", "560.00", 1_000, None)
    await cache.write_frame([newer], as_of=10.0)
    await cache.write_frame([older, KAYNES], as_of=11.0)
    row = await redis.hgetall(keys.price("BOSCHLTD"))
    assert (row["ltp"], row["ltt_ms"], row["as_of"]) == ("576.00", "2000", "10.0")
    assert cache.out_of_order == 1
    assert await redis.hget(keys.price("KAYNES"), "ltp") == "204.10"  # the rest of the frame is written
    notices: list[tuple[float, dict[str, str]]] = []

    async def two_notices() -> bool:
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if msg is not None:
            notices.append(parse_tick_notice(msg["data"]))
        return len(notices) >= 2

    await eventually(two_notices)
    assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2) is None
    # the second notice names only what was written: the older price is never published as live
    assert notices == [(10.0, {"BOSCHLTD": "576.00"}), (11.0, {"KAYNES": "204.10"})]
    # the same exchange time (two trades in one millisecond) is not older
    await cache.write_frame([Tick("BOSCHLTD", "NSE_EQ|INE323A01026", "577.00", 2_000, None)], as_of=12.0)
    assert await redis.hget(keys.price("BOSCHLTD"), "ltp") == "577.00"
    await pubsub.aclose()
