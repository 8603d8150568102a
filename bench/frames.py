"""Pre-encoded Upstox v3 `live_feed` frames (ltpc mode) for a set of instruments, built with the project's protobuf.

Frames are encoded before a measurement starts, so a replay or a decode loop measures the consumer only.
"""

from __future__ import annotations

import random
import time

from libs.common.instruments import Instrument, load_instruments
from libs.common.proto import MarketDataFeedV3_pb2 as pb
from services.feed.subscriptions import WATCHLIST_SEGMENTS

SHIPPED_WATCHLIST = sum(1 for i in load_instruments(0) if i.segment in WATCHLIST_SEGMENTS)


def extra_for(symbols: int) -> int:
    """SIM_EXTRA_INSTRUMENTS that makes the feed's default watchlist exactly `symbols` long (>= the shipped set)."""
    return max(0, symbols - SHIPPED_WATCHLIST)


def watchlist_instruments(symbols: int) -> list[Instrument]:
    """The instruments the feed subscribes by default when SIM_EXTRA_INSTRUMENTS = extra_for(symbols)."""
    return [i for i in load_instruments(extra_for(symbols)) if i.segment in WATCHLIST_SEGMENTS]


def market_info_frame() -> bytes:
    msg = pb.FeedResponse(type=pb.market_info, currentTs=int(time.time() * 1000))
    for segment in ("NSE_EQ", "NSE_INDEX", "NSE_FO", "BSE_EQ"):
        msg.marketInfo.segmentStatus[segment] = pb.NORMAL_OPEN
    return msg.SerializeToString()


def live_frames(instruments: list[Instrument], ticks_per_frame: int, count: int, seed: int = 7) -> list[bytes]:
    """`count` live_feed frames of `ticks_per_frame` ltpc ticks each, cycling through `instruments`."""
    rng = random.Random(seed)
    frames: list[bytes] = []
    pos = 0
    now_ms = int(time.time() * 1000)
    for _ in range(count):
        msg = pb.FeedResponse(type=pb.live_feed, currentTs=now_ms)
        for _ in range(min(ticks_per_frame, len(instruments))):
            inst = instruments[pos % len(instruments)]
            pos += 1
            close = inst.close_price_paise / 100
            feed = msg.feeds[inst.instrument_key]
            feed.ltpc.ltp = round(close * (1 + rng.uniform(-0.01, 0.01)), 2)
            feed.ltpc.ltt = now_ms
            feed.ltpc.ltq = rng.randint(1, 50)
            feed.ltpc.cp = close
        frames.append(msg.SerializeToString())
    return frames
