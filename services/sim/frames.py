"""Protobuf `FeedResponse` frames in Upstox v3's order and encoding.

A `FeedResponse` is a concatenation of fields, and each `feeds` map entry is a self-contained field 2,
so a frame is built as: optional type bytes + the encoded entries of its instruments + `currentTs`.
Each instrument's entry is encoded once per interval and mode (`EntryCache`) and shared by every
connection, which keeps the per-tick Python work small.
"""

from __future__ import annotations

import struct
from datetime import datetime

from libs.common.clock import IST
from libs.common.proto import MarketDataFeedV3_pb2 as pb
from services.sim.market import Market, Quote

MODES = ("ltpc", "full", "option_greeks", "full_d30")
_LIVE_PREFIX = pb.FeedResponse(type=pb.live_feed).SerializeToString()  # b"\x08\x01"


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_KEY_FIELDS: dict[str, bytes] = {}
_FAST_PREFIX: dict[str, bytes] = {}
_DOUBLE = struct.Struct("<Bd")
# LTPC with every field set, ltq < 128 and a 6-byte ltt varint (any epoch ms of 2004..2109): 27 bytes.
_FAST_LTPC = struct.Struct("<Bd B6s BB Bd")
_last_ltt: tuple[int, bytes] = (0, b"")


def _ltt_varint(ltt_ms: int) -> bytes:
    global _last_ltt  # every tick of one market step shares its ltt; encode it once
    if _last_ltt[0] != ltt_ms:
        _last_ltt = (ltt_ms, _varint(ltt_ms))
    return _last_ltt[1]


def _ltpc_entry(key: str, ltp_paise: int, ltt_ms: int, ltq: int, cp_paise: int) -> bytes:
    """The ltpc-mode map entry, hand-encoded (byte-identical to protobuf's; tested), for throughput."""
    ltt = _ltt_varint(ltt_ms) if ltt_ms else b""
    if 0 < ltq < 128 and ltp_paise and cp_paise and len(ltt) == 6:
        prefix = _FAST_PREFIX.get(key)
        if prefix is None:
            key_field = _key_field(key)
            prefix = _FAST_PREFIX[key] = b"\x12" + _varint(len(key_field) + 31) + key_field + b"\x12\x1d\x0a\x1b"
        return prefix + _FAST_LTPC.pack(0x09, ltp_paise / 100, 0x10, ltt, 0x18, ltq, 0x21, cp_paise / 100)
    ltpc = b"".join(
        (
            _DOUBLE.pack(0x09, ltp_paise / 100) if ltp_paise else b"",
            b"\x10" + ltt if ltt_ms else b"",
            b"\x18" + _varint(ltq) if ltq else b"",
            _DOUBLE.pack(0x21, cp_paise / 100) if cp_paise else b"",
        )
    )
    feed = b"\x0a" + _varint(len(ltpc)) + ltpc
    entry = _key_field(key) + b"\x12" + _varint(len(feed)) + feed
    return b"\x12" + _varint(len(entry)) + entry


def _key_field(key: str) -> bytes:
    field = _KEY_FIELDS.get(key)
    if field is None:
        raw = key.encode()
        field = _KEY_FIELDS[key] = b"\x0a" + _varint(len(raw)) + raw
    return field


def _ts_bytes(ts_ms: int) -> bytes:
    return pb.FeedResponse(currentTs=ts_ms).SerializeToString()


def market_info_frame(status: dict[str, str], ts_ms: int) -> bytes:
    """The first frame of every connection: type market_info, the status of every segment."""
    msg = pb.FeedResponse(type=pb.market_info, currentTs=ts_ms)
    for segment, name in status.items():
        msg.marketInfo.segmentStatus[segment] = pb.MarketStatus.Value(name)  # type: ignore[assignment]
    return msg.SerializeToString()


def snapshot_frame(entries: list[bytes], ts_ms: int) -> bytes:
    """A snapshot (type initial_feed = 0, so no type field on the wire)."""
    return b"".join(entries) + _ts_bytes(ts_ms)


def live_frame(entries: list[bytes], ts_ms: int) -> bytes:
    """A live_feed frame (type = 1)."""
    return _LIVE_PREFIX + b"".join(entries) + _ts_bytes(ts_ms)


def _day_start_ms(ts_ms: int) -> int:
    day = datetime.fromtimestamp(ts_ms / 1000, tz=IST).replace(hour=0, minute=0, second=0, microsecond=0)
    return int(day.timestamp() * 1000)


def _fill_ltpc(ltpc: pb.LTPC, q: Quote, is_index: bool) -> None:
    ltpc.ltp = q.ltp / 100
    ltpc.ltt = q.ltt_ms
    if not is_index:
        ltpc.ltq = q.ltq
    ltpc.cp = q.close / 100


def _fill_ohlc(ohlc: pb.MarketOHLC, q: Quote) -> None:
    day = ohlc.ohlc.add()
    day.interval = "1d"
    day.open, day.high, day.low, day.close = q.open / 100, q.high / 100, q.low / 100, q.ltp / 100
    day.vol = q.vtt
    day.ts = _day_start_ms(q.ltt_ms)
    if q.last_minute is not None:  # I1 is the last *completed* minute
        o, h, lo, c, vol, ts = q.last_minute
        bar = ohlc.ohlc.add()
        bar.interval = "I1"
        bar.open, bar.high, bar.low, bar.close = o / 100, h / 100, lo / 100, c / 100
        bar.vol = vol
        bar.ts = ts


def _fill_depth(level: pb.MarketLevel, q: Quote, tick: int, levels: int) -> None:
    for n in range(1, levels + 1):
        quote = level.bidAskQuote.add()
        quote.bidP = max(q.ltp - n * tick, tick) / 100
        quote.askP = (q.ltp + n * tick) / 100
        quote.bidQ = 100 * n + q.ltq
        quote.askQ = 90 * n + q.ltq


def _fill_greeks(greeks: pb.OptionGreeks, market: Market, idx: int) -> tuple[float, float] | None:
    """An option's greeks from the simulator's model; (oi, iv %) to go beside them, None for other rows."""
    und = market.derivatives.underlying_of.get(idx)
    if und is None:
        return None
    stats = market.derivatives.stats(idx, market.quotes[und].ltp, market.clock.now())
    if stats is None:
        return None
    g = stats.greeks
    greeks.delta, greeks.theta, greeks.gamma, greeks.vega = round(g.delta, 4), round(g.theta, 4), g.gamma, g.vega
    return float(stats.oi), round(g.iv * 100, 2)


def encode_entry_pb(market: Market, idx: int) -> bytes:
    """The ltpc entry encoded by protobuf itself (the reference for `_ltpc_entry`; used in tests)."""
    inst = market.instruments[idx]
    msg = pb.FeedResponse()
    _fill_ltpc(msg.feeds[inst.instrument_key].ltpc, market.quotes[idx], inst.is_index)
    return msg.SerializeToString()


def encode_entry(market: Market, idx: int, mode: str, *, snapshot: bool) -> bytes:
    """One `feeds` map entry (field 2) for instrument `idx` in `mode`.

    Live `full` entries of non-options omit `optionGreeks` (as real live frames sometimes do): consumers must
    merge. Options carry their greeks, open interest and IV (%) in `full` and `option_greeks`.
    """
    inst = market.instruments[idx]
    q = market.quotes[idx]
    if mode == "ltpc":
        return _ltpc_entry(inst.instrument_key, q.ltp, q.ltt_ms, 0 if inst.is_index else q.ltq, q.close)
    msg = pb.FeedResponse()
    feed = msg.feeds[inst.instrument_key]
    if mode in ("full", "full_d30"):
        feed.requestMode = pb.full_d30 if mode == "full_d30" else pb.full_d5
        if inst.is_index:
            _fill_ltpc(feed.fullFeed.indexFF.ltpc, q, True)
            _fill_ohlc(feed.fullFeed.indexFF.marketOHLC, q)
        else:
            ff = feed.fullFeed.marketFF
            _fill_ltpc(ff.ltpc, q, False)
            _fill_depth(ff.marketLevel, q, inst.tick_size_paise, 30 if mode == "full_d30" else 5)
            option = _fill_greeks(ff.optionGreeks, market, idx)
            if option is not None:
                ff.oi, ff.iv = option
            elif snapshot:
                ff.optionGreeks.SetInParent()
            _fill_ohlc(ff.marketOHLC, q)
            ff.atp = (q.turnover_paise / q.vtt / 100) if q.vtt else q.ltp / 100
            ff.vtt = q.vtt
            ff.tbq = float(1000 + q.vtt // 2)
            ff.tsq = float(900 + q.vtt // 2)
    else:  # option_greeks
        feed.requestMode = pb.option_greeks
        flg = feed.firstLevelWithGreeks
        _fill_ltpc(flg.ltpc, q, inst.is_index)
        if not inst.is_index:
            depth = flg.firstDepth
            depth.bidP = max(q.ltp - inst.tick_size_paise, inst.tick_size_paise) / 100
            depth.askP = (q.ltp + inst.tick_size_paise) / 100
            depth.bidQ, depth.askQ = 100 + q.ltq, 90 + q.ltq
            flg.vtt = q.vtt
        option = _fill_greeks(flg.optionGreeks, market, idx)
        if option is not None:
            flg.oi, flg.iv = option
        else:
            flg.optionGreeks.SetInParent()
    return msg.SerializeToString()


class EntryCache:
    """Encoded entries for one broadcast: each (instrument, mode) is encoded at most once."""

    def __init__(self, market: Market, *, snapshot: bool = False) -> None:
        self._market = market
        self._snapshot = snapshot
        self._cache: dict[tuple[int, str], bytes] = {}

    def get(self, idx: int, mode: str) -> bytes:
        key = (idx, mode)
        entry = self._cache.get(key)
        if entry is None:
            entry = encode_entry(self._market, idx, mode, snapshot=self._snapshot)
            self._cache[key] = entry
        return entry


def day_ts_ms_for_tests(ts_ms: int) -> int:
    """Start of the IST day of `ts_ms` (the `1d` candle's ts); exposed for tests."""
    return _day_start_ms(ts_ms)
