"""The feed lease and its fence against a real Redis: an old leader's writes are refused inside Redis."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from libs.common import keys
from libs.common.clock import ManualClock
from libs.common.feed_lease import FeedLease, FencedOut
from libs.common.models import FeedState
from libs.common.price_cache import PriceCache, Tick
from libs.common.settings import Settings
from services.feed.status import StatusBoard
from tests.helpers import eventually

pytestmark = pytest.mark.integration


def _lease(redis: Redis, settings: Settings, name: str, lease_s: float = 1.0) -> FeedLease:
    # 1 s, not less: a holder's writes must land while it still holds the lease, and a loaded machine can take a
    # few hundred ms over the round trips between an acquire and the writes it makes (0.2 s could be outrun).
    return FeedLease(redis, settings.model_copy(update={"instance_name": name, "feed_lease_s": lease_s}), ManualClock())


async def test_only_the_current_holder_writes(redis: Redis, settings: Settings) -> None:
    old, new = _lease(redis, settings, "a"), _lease(redis, settings, "b")
    assert await old.acquire()
    assert not await new.acquire()  # held: the standby waits
    assert await old.acquire()  # the holder itself gets its own token back (its task restarted)

    old_cache = PriceCache(redis, 300, fence=old.fence_args)
    old_status = StatusBoard(redis, ManualClock(), fence=old.fence_args)
    await old_cache.write_frame([Tick("BOSCHLTD", "NSE_EQ|INE323A01026", "735.00")], 1.0)
    await old_status.transition(FeedState.LIVE)
    assert await redis.hget(keys.price("BOSCHLTD"), "ltp") == "735.00"

    # The old leader is paused past its lease; the standby acquires a new token.
    await eventually(new.acquire, timeout_s=3)
    assert new.token.split(":")[0] == str(int(old.token.split(":")[0]) + 1)

    # The old leader wakes with its old token: every write is refused inside Redis, nothing changes.
    with pytest.raises(FencedOut):
        await old_cache.write_frame([Tick("BOSCHLTD", "NSE_EQ|INE323A01026", "1.00")], 2.0)
    with pytest.raises(FencedOut):
        await old_cache.vouch(["BOSCHLTD"], 3.0)
    old_status.state = FeedState.CLOSED
    assert not await old_status.flush()
    row = await redis.hgetall(keys.price("BOSCHLTD"))
    assert (row["ltp"], row["as_of"]) == ("735.00", "1.0")
    assert await redis.hget(keys.FEED_STATUS, "state") == "live"
    assert not await old.renew()  # and it learns it lost the lease
    assert old.token == ""

    new_cache = PriceCache(redis, 300, fence=new.fence_args)
    await new_cache.write_frame([Tick("BOSCHLTD", "NSE_EQ|INE323A01026", "736.00")], 4.0)
    assert await redis.hget(keys.price("BOSCHLTD"), "ltp") == "736.00"

    # A clean stop hands the lease over at once.
    await new.release()
    assert await redis.exists(keys.FEED_LEASE) == 0


async def test_a_lease_lost_by_a_failover_is_taken_back_under_the_same_token(redis: Redis, settings: Settings) -> None:
    lease = _lease(redis, settings, "a", lease_s=10)
    assert await lease.acquire()
    token = lease.token
    await redis.delete(keys.FEED_LEASE)  # the promoted replica never had it
    assert await lease.renew()
    assert lease.token == token
    assert await redis.hget(keys.FEED_LEASE, "token") == token


async def test_a_crashed_feed_restarted_under_its_name_takes_over_early(redis: Redis, settings: Settings) -> None:
    clock = ManualClock()
    named = settings.model_copy(update={"instance_name": "feed-a", "feed_lease_s": 10.0})
    crashed, restarted = FeedLease(redis, named, clock), FeedLease(redis, named, clock)
    assert await crashed.acquire()
    assert not await restarted.acquire()  # the holder renewed just now: maybe alive, wait
    clock.advance(5.1)  # half a lease without a renewal (a live holder renews every third of one)
    assert await restarted.acquire()
    assert restarted.token != crashed.token  # a new token: whatever the old process left is fenced out
    assert not await crashed.renew()
