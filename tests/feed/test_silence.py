"""Per-instrument truth: a healthy connection vouches only for plausibly quiet instruments; one gone silent while its
segment trades is dated back to its last tick and reported within HALT_DETECT_S."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from libs.common import keys
from libs.common.models import FeedStatus
from libs.common.price_cache import Tick
from libs.common.proto import MarketDataFeedV3_pb2 as pb
from libs.common.settings import Settings
from services.feed.silence import InstrumentWatch
from services.sim.server import Simulator, running_simulator
from tests.feed.conftest import Logs, fast, running_feed
from tests.helpers import eventually

WANTED = {"BOSCHLTD": "NSE_EQ|INE323A01026", "KAYNES": "NSE_EQ|INE918Z01012", "NIFTY": "NSE_INDEX|Nifty 50"}


def tick(symbol: str) -> Tick:
    return Tick(symbol, WANTED[symbol], "100.00")


def test_silent_only_while_another_instrument_of_its_segment_ticks() -> None:
    watch = InstrumentWatch(halt_detect_s=30, review_every_s=2)  # window 28 s
    watch.saw([tick("BOSCHLTD"), tick("KAYNES"), tick("NIFTY")], at=100)
    assert watch.review(WANTED, 120, connected_at=90, segments=None).silent == {}
    watch.saw([tick("KAYNES")], at=127)
    review = watch.review(WANTED, 128, connected_at=90, segments=None)
    # BOSCHLTD: silent 28 s while KAYNES (same segment) ticks. NIFTY: alone in its segment, plausibly quiet.
    assert list(review.silent) == ["BOSCHLTD"] and "NSE_EQ trades" in review.silent["BOSCHLTD"]
    assert sorted(review.vouch) == ["KAYNES", "NIFTY"]
    assert watch.review(WANTED, 129, connected_at=90, segments=None).silent == {}  # reported once
    watch.saw([tick("BOSCHLTD")], at=130)
    review = watch.review(WANTED, 131, connected_at=90, segments=None)
    assert review.back == ["BOSCHLTD"] and "BOSCHLTD" in review.vouch


def test_a_closed_segment_or_a_quiet_segment_is_plausibly_quiet() -> None:
    watch = InstrumentWatch(halt_detect_s=30, review_every_s=2)
    watch.saw([tick("BOSCHLTD")], at=100)
    watch.saw([tick("KAYNES")], at=160)
    closed = {"NSE_EQ": pb.NORMAL_CLOSE, "NSE_INDEX": pb.NORMAL_CLOSE}
    assert watch.review(WANTED, 161, connected_at=90, segments=closed).silent == {}
    watch2 = InstrumentWatch(halt_detect_s=30, review_every_s=2)
    watch2.saw([tick("BOSCHLTD"), tick("KAYNES")], at=100)
    review = watch2.review(WANTED, 200, connected_at=90, segments=None)  # the whole segment is quiet
    assert review.silent == {} and len(review.vouch) == 3


def test_a_silent_instrument_no_longer_wanted_is_forgotten_not_reported_back() -> None:
    watch = InstrumentWatch(halt_detect_s=30, review_every_s=2)  # window 28 s
    watch.saw([tick("BOSCHLTD"), tick("KAYNES")], at=100)
    watch.saw([tick("KAYNES")], at=127)
    assert list(watch.review(WANTED, 128, connected_at=90, segments=None).silent) == ["BOSCHLTD"]
    still = {s: k for s, k in WANTED.items() if s != "BOSCHLTD"}
    review = watch.review(still, 129, connected_at=90, segments=None)
    assert review.silent == {} and review.back == [] and sorted(review.vouch) == ["KAYNES", "NIFTY"]
    assert watch.silent == {} and "BOSCHLTD" not in watch.last_tick


@pytest.fixture
async def sim(settings: Settings) -> AsyncIterator[Simulator]:
    async with running_simulator(fast(settings, sim_ticks_per_interval=100_000)) as running:
        yield running


@pytest.mark.integration
async def test_a_halted_instrument_among_ticking_ones_is_reported_and_ages_truly(
    sim: Simulator, settings: Settings, redis: Redis, logs: Logs
) -> None:
    halt_detect_s = 1.5
    watchlist = ["BOSCHLTD", "KAYNES", "SBIN"]
    feed_settings = fast(settings, upstox_api_base=sim.rest_url, halt_detect_s=halt_detect_s, feed_watchlist=watchlist)
    async with running_feed(feed_settings, redis):
        await eventually(lambda: redis.hget(keys.price("BOSCHLTD"), "ltp"))
        sim.market.halt("BOSCHLTD", True)
        halted_at = time.time()

        async def reported() -> dict[str, str] | None:
            row = await redis.hgetall(keys.price("BOSCHLTD"))
            return row if "silent_reason" in row else None

        row = await eventually(reported, timeout_s=halt_detect_s + 3)
        assert time.time() - halted_at <= halt_detect_s + 0.5  # no later than HALT_DETECT_S after its last tick
        assert row["as_of"] == row["received_at"] == row["silent_since"]  # dated back to its last real tick
        assert float(row["as_of"]) <= halted_at + 0.1
        assert "NSE_EQ trades" in row["silent_reason"]
        assert any(line.startswith("[WARNING] BOSCHLTD: no tick for") for line in logs.lines)
        events = [json.loads(f["event"]) for _, f in await redis.xrange(keys.EVENTS_STREAM)]
        assert [e["symbol"] for e in events if e["kind"] == "instrument_silent"] == ["BOSCHLTD"]
        # never vouched again while halted; the others are
        await eventually(lambda: _status_says_silent(redis))
        before = await redis.hget(keys.price("KAYNES"), "as_of")
        await eventually(lambda: _moved(redis, "KAYNES", before))
        assert await redis.hget(keys.price("BOSCHLTD"), "as_of") == row["as_of"]

        sim.market.halt("BOSCHLTD", False)
        await eventually(lambda: _moved(redis, "BOSCHLTD", row["as_of"]))
        await eventually(lambda: "[INFO] BOSCHLTD is ticking again" in logs.lines)


async def _moved(redis: Redis, symbol: str, before: str | None) -> bool:
    return await redis.hget(keys.price(symbol), "as_of") != before


async def _status_says_silent(redis: Redis) -> bool:
    return FeedStatus.from_redis(await redis.hgetall(keys.FEED_STATUS)).silent_symbols == 1


@pytest.mark.integration
async def test_the_feed_trims_expired_symbols_from_the_index(sim: Simulator, settings: Settings, redis: Redis) -> None:
    await redis.zadd(keys.PRICE_INDEX, {"GONE": time.time() - 400})  # its price expired long ago (TTL 300 s)
    feed_settings = fast(settings, upstox_api_base=sim.rest_url, feed_watchlist=["BOSCHLTD"])
    async with running_feed(feed_settings, redis):
        await eventually(lambda: _not_indexed(redis, "GONE"), timeout_s=3)
        await eventually(lambda: redis.zscore(keys.PRICE_INDEX, "BOSCHLTD"))  # live symbols stay


async def _not_indexed(redis: Redis, symbol: str) -> bool:
    return await redis.zscore(keys.PRICE_INDEX, symbol) is None
