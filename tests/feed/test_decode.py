from __future__ import annotations

import pytest

from libs.common.price_cache import Tick
from libs.common.proto import MarketDataFeedV3_pb2 as pb
from services.feed.decode import MARKET_INFO, CorruptFrame, decode, market_open, skim

BOSCH = "NSE_EQ|INE323A01026"
KAYNES = "NSE_EQ|INE918Z01012"
NIFTY = "NSE_INDEX|Nifty 50"
SYMBOLS = {BOSCH: "BOSCHLTD", KAYNES: "KAYNES", NIFTY: "NIFTY"}


def test_ltpc_frame_gives_rupee_strings_and_trade_time() -> None:
    msg = pb.FeedResponse(type=pb.live_feed, currentTs=1)
    ltpc = msg.feeds[BOSCH].ltpc
    ltpc.ltp, ltpc.ltt, ltpc.ltq, ltpc.cp = 575.0, 1_767_000_000_123, 5, 735.0
    frame = decode(msg.SerializeToString(), SYMBOLS)
    assert frame.kind == pb.live_feed
    assert frame.ticks == [Tick("BOSCHLTD", BOSCH, "575.00", 1_767_000_000_123, "735.00")]


def test_full_market_and_index_feeds_are_read() -> None:
    msg = pb.FeedResponse()  # a snapshot: initial_feed (0) is not on the wire
    market = msg.feeds[KAYNES].fullFeed.marketFF
    market.ltpc.ltp, market.ltpc.cp = 204.1, 200.0
    market.marketLevel.bidAskQuote.add(bidP=204.0, askP=204.2)
    index = msg.feeds[NIFTY].fullFeed.indexFF
    index.ltpc.ltp, index.ltpc.ltt = 24001.35, 99
    frame = decode(msg.SerializeToString(), SYMBOLS)
    assert frame.kind == pb.initial_feed
    assert sorted(frame.ticks, key=lambda t: t.symbol) == [
        Tick("KAYNES", KAYNES, "204.10", None, "200.00"),
        Tick("NIFTY", NIFTY, "24001.35", 99, None),
    ]


def test_option_greeks_feed_uses_its_ltpc() -> None:
    msg = pb.FeedResponse(type=pb.live_feed)
    msg.feeds[BOSCH].firstLevelWithGreeks.ltpc.ltp = 576.5
    assert decode(msg.SerializeToString(), SYMBOLS).ticks == [Tick("BOSCHLTD", BOSCH, "576.50")]


def test_missing_fields_are_never_zero_prices() -> None:
    msg = pb.FeedResponse(type=pb.live_feed)
    msg.feeds[BOSCH].fullFeed.marketFF.atp = 575.0  # a partial full frame without ltpc
    msg.feeds[KAYNES].ltpc.ltq = 10  # an ltpc without ltp
    msg.feeds[NIFTY].fullFeed.indexFF.marketOHLC.ohlc.add(interval="1d")
    frame = decode(msg.SerializeToString(), SYMBOLS)
    assert frame.ticks == []


def test_unknown_instruments_are_counted_not_written() -> None:
    msg = pb.FeedResponse(type=pb.live_feed)
    msg.feeds["NSE_EQ|UNKNOWN"].ltpc.ltp = 10.0
    msg.feeds[BOSCH].ltpc.ltp = 575.0
    frame = decode(msg.SerializeToString(), SYMBOLS)
    assert [t.symbol for t in frame.ticks] == ["BOSCHLTD"]
    assert frame.unknown_keys == 1


def test_market_info_tells_whether_the_market_is_open() -> None:
    msg = pb.FeedResponse(type=pb.market_info, currentTs=5)
    msg.marketInfo.segmentStatus["NSE_EQ"] = pb.NORMAL_OPEN
    msg.marketInfo.segmentStatus["MCX_FO"] = pb.NORMAL_CLOSE
    frame = decode(msg.SerializeToString(), SYMBOLS)
    assert frame.kind == MARKET_INFO
    assert frame.segment_status is not None
    assert market_open(frame.segment_status, {"NSE_EQ", "NSE_INDEX"}) is True
    assert market_open(frame.segment_status, {"MCX_FO"}) is False
    assert market_open({"NSE_EQ": pb.NORMAL_CLOSE}, {"NSE_EQ"}) is False
    assert market_open({"BSE_EQ": pb.NORMAL_OPEN}, {"NSE_EQ"}) is True  # none of ours listed: any segment


@pytest.mark.parametrize("data", [b"\x12\x05\x0a", b"\xff\xff\xff", "a text frame"])
def test_corrupt_frames_raise(data: bytes | str) -> None:
    with pytest.raises(CorruptFrame):
        decode(data, SYMBOLS)


FO = "NSE_FO|50904"


@pytest.mark.parametrize(
    ("key", "ltp", "cp"),
    [
        (BOSCH, 1e26, 0.0),  # beyond any price
        (BOSCH, float("inf"), 735.0),
        (BOSCH, float("nan"), 735.0),
        (BOSCH, -575.0, 735.0),
        (BOSCH, 1200.0, 735.0),  # an equity cannot trade at 1.6x its previous close
        (NIFTY, 11000.0, 24000.0),  # nor an index at 0.46x
    ],
)
def test_absurd_prices_are_refused_not_written(key: str, ltp: float, cp: float) -> None:
    msg = pb.FeedResponse(type=pb.live_feed)
    msg.feeds[key].ltpc.ltp, msg.feeds[key].ltpc.cp = ltp, cp
    msg.feeds[KAYNES].ltpc.ltp = 204.1  # another symbol in the same frame is untouched
    frame = decode(msg.SerializeToString(), {**SYMBOLS, FO: "BANKNIFTY CE"})
    assert frame.ticks == [Tick("KAYNES", KAYNES, "204.10")]
    assert [symbol for symbol, _ in frame.absurd] == [SYMBOLS[key]]


def test_an_option_may_multiply_its_close() -> None:
    msg = pb.FeedResponse(type=pb.live_feed)
    msg.feeds[FO].ltpc.ltp, msg.feeds[FO].ltpc.cp = 450.0, 40.0
    frame = decode(msg.SerializeToString(), {FO: "BANKNIFTY CE"})
    assert frame.ticks == [Tick("BANKNIFTY CE", FO, "450.00", None, "40.00")] and not frame.absurd


def _ltp_frame(prices: dict[str, float]) -> bytes:
    msg = pb.FeedResponse(type=pb.live_feed)
    for key, ltp in prices.items():
        msg.feeds[key].ltpc.ltp = ltp
    return msg.SerializeToString()


def test_a_backlog_decoded_newest_first_keeps_each_symbols_newest_tick_and_counts_the_rest() -> None:
    older = _ltp_frame({BOSCH: 570.0, KAYNES: 200.0})
    newer = _ltp_frame({BOSCH: 575.0})
    taken: set[str] = set()
    first = decode(newer, SYMBOLS, taken)
    second = decode(older, SYMBOLS, taken)
    assert [t.ltp for t in first.ticks] == ["575.00"] and first.superseded == 0
    assert [(t.symbol, t.ltp) for t in second.ticks] == [("KAYNES", "200.00")]
    assert second.superseded == 1  # BOSCH's 570.00 is older than the 575.00 already kept
    assert taken == {"BOSCHLTD", "KAYNES"}


def test_skim_reads_the_type_and_size_only() -> None:
    assert skim(_ltp_frame({BOSCH: 1.0, KAYNES: 2.0})) == (pb.live_feed, 2)
    with pytest.raises(CorruptFrame):
        skim(b"\xff\xff")
