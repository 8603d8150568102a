"""The simulator's F&O contracts: rows of the day, premiums that follow the index, greeks in the feed, and
the exchange's lot / freeze rules on orders."""

from __future__ import annotations

import gzip
import json
from datetime import datetime

import pytest

from libs.common.clock import IST, ManualClock
from libs.common.instruments import load_instruments, master_file_gz
from libs.common.proto import MarketDataFeedV3_pb2 as pb
from services.sim.errors import UpstoxError
from services.sim.frames import encode_entry
from services.sim.gtt import GttBook
from services.sim.market import Market
from services.sim.orders import OrderBook

# Thursday 3 Dec 2026, 11:00 IST: the next NIFTY weekly is Tuesday 8 Dec, the monthly Tuesday 29 Dec.
NOW = datetime(2026, 12, 3, 11, 0, tzinfo=IST).timestamp()
CE = "NIFTY 24000 CE 08 DEC 26"


@pytest.fixture
def market() -> Market:
    clock = ManualClock(NOW)
    return Market(load_instruments(now=NOW), seed=1, clock=clock)


def test_rows_of_the_day_in_upstox_shape() -> None:

    rows = [
        r for r in json.loads(gzip.decompress(master_file_gz(load_instruments(now=NOW)))) if r["segment"] == "NSE_FO"
    ]
    ce = next(r for r in rows if r["trading_symbol"] == CE)
    assert ce["expiry"] == int(datetime(2026, 12, 8, 23, 59, 59, tzinfo=IST).timestamp() * 1000)
    assert (ce["lot_size"], ce["freeze_quantity"], ce["tick_size"], ce["strike_price"]) == (75, 1800.0, 5.0, 24000.0)
    assert ce["underlying_key"] == "NSE_INDEX|Nifty 50" and ce["weekly"] is True
    symbols = {r["trading_symbol"] for r in rows}
    assert {"NIFTY 24000 PE 15 DEC 26", "NIFTY FUT 29 DEC 26", "BANKNIFTY 52000 PE 29 DEC 26"} <= symbols
    assert {"BANKNIFTY FUT 29 DEC 26"} <= symbols and not any("BANKNIFTY" in s and "08 DEC" in s for s in symbols)
    assert len({r["instrument_key"] for r in rows}) == len(rows)


def test_premiums_follow_the_index_faster_than_it_moves(market: Market) -> None:
    ce, pe = market.by_symbol[CE], market.by_symbol["NIFTY 24000 PE 08 DEC 26"]
    market.set_price("NIFTY", 2400000)
    ce_before, pe_before = market.quotes[ce].ltp, market.quotes[pe].ltp
    market.set_price("NIFTY", 2376000)  # -1 %
    assert market.quotes[ce].ltp < ce_before * 0.7  # the call lost over 30 %
    assert market.quotes[pe].ltp > pe_before * 1.3
    assert market.quotes[ce].ltp % 5 == 0


def test_option_greeks_and_full_frames_carry_greeks_oi_and_iv(market: Market) -> None:
    idx = market.by_symbol[CE]
    feed = pb.FeedResponse.FromString(encode_entry(market, idx, "option_greeks", snapshot=False)).feeds[
        market.instruments[idx].instrument_key
    ]
    flg = feed.firstLevelWithGreeks
    assert flg.ltpc.ltp == market.quotes[idx].ltp / 100
    assert 0.3 < flg.optionGreeks.delta < 0.7 and flg.optionGreeks.theta < 0 and flg.optionGreeks.vega > 0
    assert flg.oi > 0 and flg.iv == 14.0
    full = pb.FeedResponse.FromString(encode_entry(market, idx, "full", snapshot=False)).feeds[
        market.instruments[idx].instrument_key
    ]
    assert full.fullFeed.marketFF.optionGreeks.delta == flg.optionGreeks.delta and full.fullFeed.marketFF.oi == flg.oi


def test_lot_and_freeze_rules(market: Market) -> None:
    book = OrderBook(market, market.clock)
    key = market.instruments[market.by_symbol[CE]].instrument_key
    body = {"quantity": 5400, "product": "I", "validity": "DAY", "price": 0, "instrument_token": key,
            "order_type": "MARKET", "transaction_type": "BUY", "disclosed_quantity": 0, "trigger_price": 0,
            "is_amo": False}  # fmt: skip
    with pytest.raises(UpstoxError, match="freeze quantity 1800"):
        book.place(body, version=3)
    with pytest.raises(UpstoxError, match="freeze quantity 1800"):
        book.place(body, version=2)
    with pytest.raises(UpstoxError, match="lot size 75"):
        book.place({**body, "quantity": 100}, version=3)
    placed = book.place({**body, "slice": True}, version=3)
    assert [o.quantity for o in placed] == [1800, 1800, 1800] and {o.status for o in placed} == {"complete"}
    with pytest.raises(UpstoxError, match="more than 25"):
        book.place({**body, "quantity": 26 * 1800, "slice": True}, version=3)


def test_a_fired_gtt_over_the_freeze_quantity_is_rejected_by_the_exchange(market: Market) -> None:
    """A GTT's order is one exchange order that nothing slices: over the freeze quantity it is rejected as the
    exchange would; whole lots at most the freeze quantity fill."""
    book = OrderBook(market, market.clock)
    gtts = GttBook(market, book, market.clock)
    inst = market.instruments[market.by_symbol[CE]]
    market.set_price(CE, 15000)
    book.trade(CE, "buy", 3 * 1800)
    stop = {"strategy": "ENTRY", "trigger_type": "BELOW", "trigger_price": 120.0}
    body = {"type": "SINGLE", "product": "I", "instrument_token": inst.instrument_key, "transaction_type": "SELL"}
    too_big = gtts.place({**body, "quantity": 3 * 1800, "rules": [stop]})
    legs = [gtts.place({**body, "quantity": 1800, "rules": [stop]}) for _ in range(2)]
    market.set_price(CE, 11900)
    rule = too_big.rules[0]
    assert rule.status == "FAILED" and "freeze quantity 1800" in (rule.message or "")
    assert book.orders[rule.order_id or ""].status == "rejected"
    assert [book.orders[g.rules[0].order_id or ""].status for g in legs] == ["complete", "complete"]
    assert book.positions.net(inst.instrument_key, "I") == 1800  # only the two legs sold


def test_nse_fo_has_its_own_segment_status_and_a_closed_segment_does_not_tick(market: Market) -> None:
    assert market.segment_status()["NSE_FO"] == "NORMAL_OPEN"
    ce = market.by_symbol[CE]
    market.force_status("NORMAL_CLOSE", "NSE_FO")
    before = market.quotes[ce].ltp
    nifty = market.by_symbol["NIFTY"]
    moved = set()
    for _ in range(200):
        moved.update(market.step())
    assert nifty in moved and ce not in moved and market.quotes[ce].ltp == before
    market.force_status(None, "NSE_FO")
    for _ in range(200):
        moved.update(market.step())
    assert ce in moved
