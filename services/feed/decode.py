"""Protobuf `FeedResponse` frames to `Tick`s, on the hot path.

Fields are read directly from the upb message (no `MessageToDict`). proto3 scalars have no presence,
so a zero `ltp`, `ltt` or `cp` means "absent in this frame" and is never written as a price: the
cache keeps the value it had (partial frames merge).

An absurd price is not a price: negative or not finite, above `MAX_LTP_PAISE`, or, for an equity or an index,
outside half to one and a half times its previous close (`cp`). No NSE equity band is wider than 20 %, a
market-wide halt stops indices at 20 %, and the simulator's pinned test prices stay inside it; derivatives can
legitimately multiply, so they get only the first two checks. Such a tick goes to `Frame.absurd`, not `ticks`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from libs.common.money import MAX_LTP_PAISE
from libs.common.price_cache import Tick
from libs.common.proto import MarketDataFeedV3_pb2 as pb

_from_string = pb.FeedResponse.FromString
MARKET_INFO = pb.market_info
NORMAL_OPEN = pb.NORMAL_OPEN
_MAX_LTP = MAX_LTP_PAISE / 100
_CLOSE_BAND = (0.5, 1.5)  # equities and indices: ltp / previous close must be inside this
_banded: dict[str, bool] = {}  # instrument key -> whether the close band applies (equity or index)
# Previous close -> its rupee string: a symbol's close is the same all day, so formatting it again per tick is waste.
_close_text: dict[float, str] = {}
_CLOSE_TEXT_MAX = 100_000  # forgotten past this (new closes each day)


def _close(cp: float) -> str:
    text = _close_text.get(cp)
    if text is None:
        if len(_close_text) >= _CLOSE_TEXT_MAX:
            _close_text.clear()
        text = _close_text[cp] = f"{cp:.2f}"
    return text


def _is_banded(key: str) -> bool:
    banded = _banded.get(key)
    if banded is None:
        segment = key.partition("|")[0]
        banded = _banded[key] = segment.endswith(("_EQ", "_INDEX"))
    return banded


class CorruptFrame(ValueError):
    """A frame that is not a `FeedResponse` (bad protobuf, or a text frame)."""


@dataclass(slots=True)
class Frame:
    """One decoded frame: its type, the ticks it carried, and the market state when it was `market_info`."""

    kind: int
    ticks: list[Tick] = field(default_factory=list)
    segment_status: dict[str, int] | None = None
    unknown_keys: int = 0
    superseded: int = 0  # ticks left out because a newer frame of the same batch had the symbol (decode_newest)
    absurd: list[tuple[str, float]] = field(default_factory=list)  # (symbol, ltp) refused as not a price


def market_open(segment_status: Mapping[str, int], segments: set[str]) -> bool:
    """True when any of `segments` (or any segment, when none of them is listed) is NORMAL_OPEN."""
    relevant = [status for seg, status in segment_status.items() if seg in segments]
    return any(status == NORMAL_OPEN for status in (relevant or segment_status.values()))


def skim(data: bytes | str) -> tuple[int, int]:
    """(frame type, number of feeds) without decoding the ticks: for frames whose every symbol a newer frame
    already carries. Raises `CorruptFrame`."""
    if not isinstance(data, bytes):
        raise CorruptFrame("text frame")
    try:
        msg = _from_string(data)
    except DecodeError as exc:
        raise CorruptFrame(str(exc) or "undecodable protobuf") from None
    return msg.type, len(msg.feeds)


def decode(data: bytes | str, symbol_of: Mapping[str, str], taken: set[str] | None = None) -> Frame:
    """Decode one binary frame; `symbol_of` maps instrument key -> symbol. Raises `CorruptFrame`.

    With `taken` (symbols already decoded from newer frames), those symbols are skipped and counted in
    `superseded`, and every symbol decoded here is added to it.
    """
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
    superseded = 0
    feeds = msg.feeds
    for key in feeds:  # keys first: `items()` is pure Python over the upb map and builds every value
        symbol = symbol_of.get(key)
        if symbol is None:
            unknown += 1
            continue
        if taken is not None and symbol in taken:
            superseded += 1
            continue
        feed = feeds[key]
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
        if ltp == 0.0:  # absent: keep the cached price
            continue
        cp = ltpc.cp
        if (
            not 0 < ltp <= _MAX_LTP  # negative, NaN, infinite or absurdly large
            or (cp > 0 and _is_banded(key) and not cp * _CLOSE_BAND[0] <= ltp <= cp * _CLOSE_BAND[1])
        ):
            frame.absurd.append((symbol, ltp))
            continue
        append(Tick(symbol, key, f"{ltp:.2f}", ltpc.ltt or None, _close(cp) if cp > 0 else None))
        if taken is not None:
            taken.add(symbol)
    frame.unknown_keys = unknown
    frame.superseded = superseded
    return frame
