from __future__ import annotations

import fakeredis

from libs.common import keys
from libs.common.instruments import instrument_index
from libs.common.settings import Settings
from services.feed.subscriptions import Subscriptions, watchlist
from tests.feed.conftest import Logs

BOSCH = "NSE_EQ|INE323A01026"


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_default_watchlist_is_every_shipped_nse_equity_and_index() -> None:
    index = instrument_index()
    watch = watchlist(settings(), index)
    assert len(watch) >= 200
    assert watch["BOSCHLTD"] == BOSCH
    assert watch["KAYNES"] == "NSE_EQ|INE918Z01012"
    assert watch["NIFTY"] == "NSE_INDEX|Nifty 50"


def test_with_the_real_upstox_the_default_watchlist_is_empty_and_never_synthetic(logs: Logs) -> None:
    index = instrument_index()
    real = {"upstox_access_token": "a-real-token"}
    assert watchlist(settings(**real), index) == {}  # open positions come from feed:subscriptions
    watch = watchlist(settings(**real, feed_watchlist=["BOSCHLTD", "SIMEQ001", "NIFTY"]), index)
    assert watch == {"BOSCHLTD": BOSCH, "NIFTY": "NSE_INDEX|Nifty 50"}
    assert logs.having("Watchlist symbol SIMEQ001 is a simulator instrument")


def test_configured_watchlist_accepts_symbols_and_symbol_equals_key(logs: Logs) -> None:
    index = instrument_index()
    watch = watchlist(settings(feed_watchlist=["BOSCHLTD", "NEWCO=NSE_EQ|INE000X01010", "NOPE"]), index)
    assert watch == {"BOSCHLTD": BOSCH, "NEWCO": "NSE_EQ|INE000X01010"}
    assert logs.having("Watchlist symbol NOPE is not in the instrument list")


async def test_requests_and_the_hash_make_the_wanted_set() -> None:
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    index = instrument_index()
    subs = Subscriptions({"BOSCHLTD": BOSCH}, index)
    change = subs.apply_request("sub NEWCO NSE_EQ|INE000X01010")
    assert change.added == {"NEWCO": "NSE_EQ|INE000X01010"}
    assert subs.symbol_of["NSE_EQ|INE000X01010"] == "NEWCO"

    await redis.hset(keys.FEED_SUBSCRIPTIONS, mapping={"KAYNES": "NSE_EQ|INE918Z01012"})
    change = await subs.refresh(redis)
    assert change.added == {"KAYNES": "NSE_EQ|INE918Z01012"}
    assert set(subs.wanted) == {"BOSCHLTD", "NEWCO", "KAYNES"}

    assert subs.apply_request("unsub NEWCO").removed == {"NEWCO": "NSE_EQ|INE000X01010"}
    assert not subs.apply_request("unsub BOSCHLTD")  # the watchlist stays
    assert not subs.apply_request("garbage")
    assert not await subs.refresh(redis)
    await redis.hdel(keys.FEED_SUBSCRIPTIONS, "KAYNES")
    assert (await subs.refresh(redis)).removed == {"KAYNES": "NSE_EQ|INE918Z01012"}
    assert set(subs.wanted) == {"BOSCHLTD"}
    await redis.aclose()
