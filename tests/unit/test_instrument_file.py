"""Reading an Upstox instrument file (INSTRUMENTS_URL as a path here; tests/sim/test_instrument_rollover.py reads
the simulator's over HTTP) and listing the instruments again once per trading day."""

from __future__ import annotations

import gzip
import json
from datetime import datetime
from pathlib import Path

import pytest

from libs.common.clock import IST, ManualClock
from libs.common.instruments import (
    RETRY_S,
    GuardInstruments,
    Instrument,
    guard_instruments,
    load_instruments,
    master_file_gz,
    next_listing,
    read_instrument_file,
)
from libs.common.settings import Settings

# Upstox's rows as documented (../shared/reference/upstox-protocol.md §5), one of them listed on BSE too.
UPSTOX_ROWS = [
    {"segment": "NSE_FO", "name": "BANKNIFTY", "exchange": "NSE", "expiry": 1767119399000, "instrument_type": "CE",
     "instrument_key": "NSE_FO|50904", "lot_size": 35, "freeze_quantity": 875.0, "exchange_token": "50904",
     "minimum_lot": 35, "underlying_key": "NSE_INDEX|Nifty Bank", "tick_size": 5.0,
     "trading_symbol": "BANKNIFTY 51200 CE 30 DEC 25", "strike_price": 51200.0},
    {"segment": "BSE_EQ", "name": "RELIANCE INDUSTRIES LTD", "exchange": "BSE", "instrument_type": "EQ",
     "instrument_key": "BSE_EQ|INE002A01018", "lot_size": 1, "tick_size": 5.0, "trading_symbol": "RELIANCE"},
    {"segment": "NSE_EQ", "name": "RELIANCE INDUSTRIES LTD", "exchange": "NSE", "isin": "INE002A01018",
     "instrument_type": "EQ", "instrument_key": "NSE_EQ|INE002A01018", "lot_size": 1, "freeze_quantity": 100000.0,
     "exchange_token": "2885", "tick_size": 10.0, "trading_symbol": "RELIANCE", "security_type": "NORMAL"},
    {"segment": "NSE_INDEX", "name": "Nifty Bank", "exchange": "NSE", "instrument_type": "INDEX",
     "instrument_key": "NSE_INDEX|Nifty Bank", "exchange_token": "26009", "trading_symbol": "BANKNIFTY"},
    {"name": "a row with no key", "trading_symbol": "BROKEN"},
]  # fmt: skip

# Tuesday 8 Dec 2026 (a NIFTY weekly expiry), 14:00 IST.
TUESDAY = datetime(2026, 12, 8, 14, 0, tzinfo=IST).timestamp()


def test_upstox_rows_are_read_with_their_fno_fields_nse_first_and_bad_rows_skipped(tmp_path: Path) -> None:
    path = tmp_path / "NSE.json.gz"
    path.write_bytes(gzip.compress(json.dumps(UPSTOX_ROWS).encode()))
    index = GuardInstruments(lambda now: read_instrument_file(str(path)), ManualClock(TUESDAY), fallback=list)
    assert len(index) == 4  # the row without a key is skipped
    ce = index.by_key("NSE_FO|50904")
    assert ce is not None and ce.is_option and ce.is_derivative
    assert (ce.lot_size, ce.freeze_quantity, ce.tick_size_paise, ce.strike_paise) == (35, 875.0, 5, 5120000)
    assert (ce.expiry_ms, ce.underlying_key) == (1767119399000, "NSE_INDEX|Nifty Bank")
    reliance = index.by_symbol("RELIANCE")
    assert reliance is not None and reliance.instrument_key == "NSE_EQ|INE002A01018"  # not the BSE row


def test_the_simulators_file_reads_back_as_the_same_instruments(tmp_path: Path) -> None:
    listed = load_instruments(now=TUESDAY)
    path = tmp_path / "complete.json.gz"
    path.write_bytes(master_file_gz(listed))
    assert read_instrument_file(str(path)) == listed
    plain = tmp_path / "complete.json"
    plain.write_bytes(gzip.decompress(master_file_gz(listed)))
    assert read_instrument_file(str(plain)) == listed


def test_an_unreadable_file_is_an_error_that_names_it(tmp_path: Path) -> None:
    (tmp_path / "empty.json").write_text("[]")
    (tmp_path / "html.json").write_text("<html>maintenance</html>")
    with pytest.raises(ValueError, match="no instrument rows"):
        read_instrument_file(str(tmp_path / "empty.json"))
    with pytest.raises(ValueError, match="Expecting value"):
        read_instrument_file(str(tmp_path / "html.json"))
    with pytest.raises(FileNotFoundError, match=r"missing\.json\.gz"):
        read_instrument_file(str(tmp_path / "missing.json.gz"))


def test_the_list_is_read_again_after_0630_ist_of_each_new_day() -> None:
    clock = ManualClock(TUESDAY)
    reads: list[float] = []

    def load(now: float) -> list[Instrument]:
        reads.append(now)
        return load_instruments(now=now)

    index = GuardInstruments(load, clock, fallback=list)
    todays = "NIFTY 24000 CE 08 DEC 26"  # expires today at 15:30
    assert index.by_symbol(todays) is not None and index.by_symbol("NIFTY 24000 CE 22 DEC 26") is None
    clock.advance(12 * 3600)  # Wednesday 02:00: Upstox has not rewritten its file yet
    assert index.by_symbol(todays) is not None and len(reads) == 1
    assert next_listing(clock.now()) == datetime(2026, 12, 9, 6, 30, tzinfo=IST).timestamp()
    clock.advance(5 * 3600)  # Wednesday 07:00: the bulk lookup (connection health's) reads it again too
    new, unknown = index.by_symbols(["NIFTY 24000 CE 22 DEC 26", "NOSUCH"])
    assert new is not None and unknown is None  # the new weekly, listed today
    assert len(reads) == 2
    kept = index.by_symbol(todays)  # gone from the new list, kept: it stopped trading yesterday
    assert kept is not None and kept not in load_instruments(now=clock.now())
    clock.advance(8 * 86400)  # Thursday 17 Dec: read again once, and the 8 Dec weekly is more than a week gone
    assert index.by_symbol(todays) is None and len(reads) == 3


def test_a_failed_read_keeps_the_previous_list_and_asks_again_a_minute_later() -> None:
    clock = ManualClock(TUESDAY)
    fail = [False]

    def load(now: float) -> list[Instrument]:
        if fail[0]:
            raise OSError("connection refused")
        return load_instruments(now=now)

    index = GuardInstruments(load, clock, fallback=list)
    fail[0] = True
    clock.advance(17 * 3600)  # Wednesday 07:00
    assert index.by_symbol("NIFTY 24000 CE 08 DEC 26") is not None  # yesterday's list, still answering
    fail[0] = False
    clock.advance(RETRY_S - 1)
    assert index.by_symbol("NIFTY 24000 CE 22 DEC 26") is None
    clock.advance(1)
    assert index.by_symbol("NIFTY 24000 CE 22 DEC 26") is not None


def test_an_unreachable_file_at_start_falls_back_to_the_shipped_list(tmp_path: Path) -> None:
    s = Settings(_env_file=None, instruments_url=str(tmp_path / "missing.json.gz"))  # type: ignore[call-arg]
    index = guard_instruments(s, ManualClock(TUESDAY))
    assert index.by_symbol("BOSCHLTD") is not None
    assert index.by_symbol("NIFTY 24000 CE 08 DEC 26") is not None  # simulator mode: its own contracts
