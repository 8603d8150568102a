"""Instrument file and market model (no sockets)."""

from __future__ import annotations

import gzip
import json
from datetime import datetime

from libs.common.clock import IST, ManualClock, SystemClock
from libs.common.instruments import instrument_index, load_instruments, master_file_gz
from libs.common.proto import MarketDataFeedV3_pb2 as pb
from services.sim.frames import EntryCache, encode_entry_pb, live_frame
from services.sim.market import Market, nse_status_at


def test_shipped_instruments_include_the_guides_symbols_and_200_equities() -> None:
    index = instrument_index()
    bosch = index.by_symbol("BOSCHLTD")
    assert bosch is not None and bosch.instrument_key == "NSE_EQ|INE323A01026"
    assert bosch.close_price_paise == 73500 and bosch.tick_size_paise == 5
    assert index.symbol_of("NSE_EQ|INE918Z01012") == "KAYNES"
    nifty = index.by_key("NSE_INDEX|Nifty 50")
    assert nifty is not None and nifty.is_index
    assert sum(1 for i in index.all if i.segment == "NSE_EQ") >= 210
    assert len({i.instrument_key for i in index.all}) == len(index.all)


def test_extra_instruments_are_synthetic_and_deterministic() -> None:
    extra = load_instruments(5000)
    assert len(extra) == len(load_instruments()) + 5000
    assert extra[-1].trading_symbol == "SIMEQ5000" and extra[-1].instrument_key == "NSE_EQ|SIMEQ5000"
    assert load_instruments(5000) == extra
    assert all(i.close_price_paise % i.tick_size_paise == 0 for i in extra)


def test_master_file_is_gzipped_upstox_rows() -> None:
    rows = json.loads(gzip.decompress(master_file_gz(load_instruments())))
    bosch = next(r for r in rows if r["trading_symbol"] == "BOSCHLTD")
    assert bosch["instrument_key"] == "NSE_EQ|INE323A01026" and bosch["tick_size"] == 5.0
    nifty = next(r for r in rows if r["instrument_key"] == "NSE_INDEX|Nifty 50")
    assert "tick_size" not in nifty and "lot_size" not in nifty


def _market(seed: int = 7, clock: ManualClock | None = None, **kw: object) -> Market:
    return Market(load_instruments(), seed=seed, clock=clock or ManualClock(), **kw)  # type: ignore[arg-type]


def test_same_seed_same_prices_and_pins_do_not_shift_other_paths() -> None:
    a, b, c = _market(), _market(), _market()
    c.set_price("BOSCHLTD", 57500)
    for _ in range(200):
        a.step(), b.step(), c.step()
    assert [q.ltp for q in a.quotes] == [q.ltp for q in b.quotes]
    bosch = c.by_symbol["BOSCHLTD"]
    assert c.quotes[bosch].ltp == 57500
    assert [q.ltp for i, q in enumerate(a.quotes) if i != bosch] == [
        q.ltp for i, q in enumerate(c.quotes) if i != bosch
    ]
    other_seed = _stepped(_market(seed=8), 200)
    assert [q.ltp for q in other_seed.quotes] != [q.ltp for q in a.quotes]


def _stepped(market: Market, steps: int) -> Market:
    for _ in range(steps):
        market.step()
    return market


def test_walk_respects_tick_and_band() -> None:
    market = _stepped(_market(moves_per_step=100), 2000)
    for inst, quote in zip(market.instruments, market.quotes, strict=True):
        low, high = inst.band_paise
        assert quote.ltp % inst.tick_size_paise == 0, inst.trading_symbol
        assert low <= quote.ltp <= high, inst.trading_symbol


def test_release_lets_the_walk_move_a_pinned_symbol_again() -> None:
    market = _market(moves_per_step=1000)
    market.set_price("BOSCHLTD", 57500)
    _stepped(market, 5)
    idx = market.by_symbol["BOSCHLTD"]
    assert market.quotes[idx].ltp == 57500
    market.release("BOSCHLTD")
    _stepped(market, 20)
    assert market.quotes[idx].ltp != 57500


def _ist(hh: int, mm: int, day: int = 7) -> float:
    return datetime(2026, 1, day, hh, mm, tzinfo=IST).timestamp()  # 2026-01-07 is a Wednesday


def test_nse_hours_on_the_ist_clock() -> None:
    assert nse_status_at(_ist(8, 59)) == "CLOSING_END"
    assert nse_status_at(_ist(9, 0)) == "PRE_OPEN_START"
    assert nse_status_at(_ist(9, 10)) == "PRE_OPEN_END"
    assert nse_status_at(_ist(9, 15)) == "NORMAL_OPEN"
    assert nse_status_at(_ist(15, 29)) == "NORMAL_OPEN"
    assert nse_status_at(_ist(15, 30)) == "NORMAL_CLOSE"
    assert nse_status_at(_ist(15, 45)) == "CLOSING_START"
    assert nse_status_at(_ist(16, 0)) == "CLOSING_END"
    assert nse_status_at(_ist(11, 0, day=10)) == "CLOSING_END"  # Saturday


def test_following_market_hours_no_moves_while_closed_and_status_listeners_fire() -> None:
    clock = ManualClock(_ist(8, 0))
    market = _market(clock=clock, follow_market_hours=True, moves_per_step=1000)
    changes: list[str] = []
    market.status_listeners.append(lambda: changes.append(market.segment_status()["NSE_EQ"]))
    assert market.step() == []
    clock.advance(3600 * 1.5)  # 09:30
    assert market.check_status() and changes == ["NORMAL_OPEN"]
    assert market.step()
    market.force_status("NORMAL_CLOSE")
    assert changes[-1] == "NORMAL_CLOSE" and market.step() == []
    market.force_status(None)
    assert changes[-1] == "NORMAL_OPEN"


def test_hand_encoded_ltpc_entries_match_protobuf() -> None:
    market = _stepped(Market(load_instruments(300), seed=3, clock=SystemClock(), moves_per_step=400), 3)
    market.set_price("KAYNES", 20410)
    market.quotes[0].ltq = 500  # an ltq beyond one varint byte takes the general path
    cache = EntryCache(market)
    for idx in range(len(market.instruments)):
        assert cache.get(idx, "ltpc") == encode_entry_pb(market, idx), market.instruments[idx].trading_symbol
    frame = pb.FeedResponse.FromString(live_frame([cache.get(i, "ltpc") for i in range(5)], 1_767_000_000_000))
    assert frame.type == pb.live_feed and len(frame.feeds) == 5 and frame.currentTs == 1_767_000_000_000


def test_a_halted_instrument_stops_trading_while_the_others_go_on_and_a_pinned_one_holds_its_level() -> None:
    a, b = _market(moves_per_step=1000), _market(moves_per_step=1000)
    b.halt("BOSCHLTD", True)
    b.set_price("KAYNES", 20000)
    bosch, kaynes = b.by_symbol["BOSCHLTD"], b.by_symbol["KAYNES"]
    halted_at = b.quotes[bosch].ltt_ms
    b.clock.advance(1.0)  # type: ignore[attr-defined]
    changed = b.step()
    a.step()
    assert bosch not in changed and b.quotes[bosch].ltt_ms == halted_at
    assert kaynes in changed and b.quotes[kaynes].ltp == 20000 and b.quotes[kaynes].ltt_ms > halted_at
    same = [i for i in range(len(a.quotes)) if i not in (bosch, kaynes)]
    assert [a.quotes[i].ltp for i in same] == [b.quotes[i].ltp for i in same]  # no other path shifted
    b.halt("BOSCHLTD", False)
    assert bosch in b.step()
