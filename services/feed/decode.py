"""Protobuf `FeedResponse` frames to `Tick`s, on the hot path.

Fields are read directly from the upb message (no `MessageToDict`). proto3 scalars have no presence,
so a zero `ltp`, `ltt` or `cp` means "absent in this frame" and is never written as a price: the
cache keeps the value it had (partial frames merge).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from libs.common.price_cache import Tick
from libs.common.proto import MarketDataFeedV3_pb2 as pb

_from_string = pb.FeedResponse.FromString
MARKET_INFO = pb.market_info
_NORMAL_OPEN = pb.NORMAL_OPEN


class CorruptFrame(ValueError):
    """A frame that is not a `FeedResponse` (bad protobuf, or a text frame)."""


@dataclass(slots=True)
class Frame:
    """One decoded frame: its type, the ticks it carried, and the market state when it was `market_info`."""

    kind: int
    ticks: list[Tick] = field(default_factory=list)
    segment_status: dict[str, int] | None = None
    unknown_keys: int = 0


def market_open(segment_status: Mapping[str, int], segments: set[str]) -> bool:
    """True when any of `segments` (or any segment, when none of them is listed) is NORMAL_OPEN."""
    relevant = [status for seg, status in segment_status.items() if seg in segments]
    return any(status == _NORMAL_OPEN for status in (relevant or segment_status.values()))


def decode(data: bytes | str, symbol_of: Mapping[str, str]) -> Frame:
    """Decode one binary frame; `symbol_of` maps instrument key -> symbol. Raises `CorruptFrame`."""
    if not isinstance(data, bytes):
        raise CorruptFrame("text frame")
    try:
        msg = _from_string(data)
    except DecodeError as exc:
        raise CorruptFrame(str(exc) or "undecodable protobuf") from None
    frame = Frame(msg.type)
    if frame.kind == MARKET_INFO:
        frame.segment_status = dict(msg.marketInfo.segmentStatus)
    ticks = frame.ticks
    append = ticks.append
    unknown = 0
    for key, feed in msg.feeds.items():
        symbol = symbol_of.get(key)
        if symbol is None:
            unknown += 1
            continue
        which = feed.WhichOneof("FeedUnion")
        if which == "ltpc":
            ltpc = feed.ltpc
        elif which == "fullFeed":
            full = feed.fullFeed
            kind = full.WhichOneof("FullFeedUnion")
            if kind == "marketFF":
                inner = full.marketFF
                if not inner.HasField("ltpc"):
                    continue
                ltpc = inner.ltpc
            elif kind == "indexFF":
                index = full.indexFF
                if not index.HasField("ltpc"):
                    continue
                ltpc = index.ltpc
            else:
                continue
        elif which == "firstLevelWithGreeks":
            greeks = feed.firstLevelWithGreeks
            if not greeks.HasField("ltpc"):
                continue
            ltpc = greeks.ltpc
        else:
            continue
        ltp = ltpc.ltp
        if not ltp > 0:  # absent (0.0) or nonsense (negative, NaN): keep the cached price
            continue
        cp = ltpc.cp
        append(Tick(symbol, key, f"{ltp:.2f}", ltpc.ltt or None, f"{cp:.2f}" if cp > 0 else None))
    frame.unknown_keys = unknown
    return frame
