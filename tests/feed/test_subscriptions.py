from __future__ import annotations

import fakeredis

from libs.common import keys
from libs.common.instruments import instrument_index
from libs.common.settings import Settings
from services.feed.subscriptions import Subscriptions, watchlist
from tests.feed.conftest import Logs

BOSCH = "NSE_EQ|INE323A01026"
FNO_DAY = 1_796_300_000.0  # Thursday 3 Dec 2026 (IST): the day's F&O rows are fixed


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


def test_an_option_brings_its_underlying_and_is_subscribed_in_option_greeks() -> None:
    index = instrument_index(now=FNO_DAY)
    option = next(i for i in index.all if i.is_option and i.name == "NIFTY")
    subs = Subscriptions({"BOSCHLTD": "NSE_EQ|INE323A01026"}, index)
    change = subs.apply_request(f"sub {option.trading_symbol} {option.instrument_key}")
    assert change.added == {option.trading_symbol: option.instrument_key, "NIFTY": "NSE_INDEX|Nifty 50"}
    assert subs.modes("ltpc") == {"BOSCHLTD": "ltpc", "NIFTY": "ltpc", option.trading_symbol: "option_greeks"}
    removed = subs.apply_request(f"unsub {option.trading_symbol}")
    assert removed.removed == {option.trading_symbol: option.instrument_key, "NIFTY": "NSE_INDEX|Nifty 50"}


def test_options_stay_in_the_base_mode_when_mixing_modes_would_break_the_combined_limits() -> None:
    index = instrument_index(3000, now=FNO_DAY)
    option = next(i for i in index.all if i.is_option)
    watch = {i.trading_symbol: i.instrument_key for i in index.all if i.segment == "NSE_EQ"}  # over 2000 ltpc keys
    subs = Subscriptions(watch, index)
    subs.apply_request(f"sub {option.trading_symbol} {option.instrument_key}")
    assert set(subs.modes("ltpc").values()) == {"ltpc"}
