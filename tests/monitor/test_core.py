"""The monitor's decisions as plain inputs and outputs: no Redis, no event loop, no private attributes.

Each interleaving of events, tick notices, sweeps and closes that once needed a change counter is a sequence
of calls here; what is known of a symbol is the copy with the highest `rev`.
"""

from __future__ import annotations

import json
from typing import Any

from libs.common.freshness import FeedLiveness, PriceTruth
from libs.common.models import CloseReason, MalformedRecord, Position, PositionState, PriceSource
from libs.common.price_cache import Tick, tick_notice
from libs.common.settings import Settings
from services.monitor.core import Core
from services.monitor.outputs import Line, Mark, Output
from services.monitor.snapshot import Snapshot
from tests.monitor.conftest import BOSCH_KEY, long_bosch, long_kaynes

NOW = 1_700_000_000.0
LIVE = FeedLiveness(True, "test")
DOWN = FeedLiveness(False, "test")


def make_core(**overrides: Any) -> Core:
    return Core(Settings(_env_file=None).model_copy(update=overrides))  # type: ignore[call-arg]


def bosch(rev: int, opened_rev: int = 1, **kw: Any) -> Position:
    return long_bosch(rev=rev, opened_rev=opened_rev, **kw)


def event(kind: str, symbol: str = "BOSCHLTD", **data: Any) -> str:
    return json.dumps({"kind": kind, "symbol": symbol, "at": NOW, **data})


def opened(position: Position) -> str:
    return event("opened", position.symbol, position=position.public(), rev=position.rev)


def notice(price: str, as_of: float = NOW, symbol: str = "BOSCHLTD") -> str:
    return tick_notice(as_of, [Tick(symbol, BOSCH_KEY, price)])


def snapshot(rev: int, *positions: Position | MalformedRecord, price: str | None = None) -> Snapshot:
    """`positions:open` as read at `rev`, with BOSCHLTD's cached price (`price`, current at NOW)."""
    items = {p.symbol if isinstance(p, Position) else "BROKEN": p for p in positions}
    truth = None if price is None else PriceTruth(int(float(price) * 100), NOW)
    return Snapshot(items, dict.fromkeys(items, truth), rev)


def lines(out: Output) -> list[str]:
    return [f"[{line.tag or line.level}] {line.message}" for line in out.lines]


def test_an_opened_event_is_watched_at_once_and_its_first_notice_closes_it() -> None:
    core = make_core()
    assert core.event(opened(bosch(1))).reads == []  # the record is in the event: no read
    out = core.notice(notice("690.00"), NOW)
    assert [c.request.reason for c in out.closes] == [CloseReason.STOP_LOSS]
    assert lines(out) == ["[SL] BOSCHLTD: Price ₹690.00 <= SL ₹698.25"]
    assert out.tick_as_of == NOW
    assert core.notice(notice("680.00"), NOW).closes == []  # its close is in flight


def test_a_notice_inside_the_levels_and_an_unwatched_symbol_do_nothing() -> None:
    core = make_core()
    core.event(opened(bosch(1)))
    assert core.notice(notice("698.26"), NOW) == Output(tick_as_of=NOW)
    assert core.notice(notice("1.00", symbol="KAYNES"), NOW) == Output()
    assert core.notice("not json", NOW) == Output() and core.bad_notices == 1


def test_a_notice_that_arrives_while_a_read_is_in_flight_is_decided_when_it_lands() -> None:
    core = make_core()
    assert core.event(event("reopened")).reads == ["BOSCHLTD"]  # no record in it: read it
    assert core.event(event("levels_changed", rev=1)).reads == []  # one read in flight is enough...
    assert core.notice(notice("690.00"), NOW).closes == []  # not known yet: kept for the read
    out = core.read("BOSCHLTD", 2, bosch(2), NOW + 1)
    assert [c.request.price_age_s for c in out.closes] == [1.0]  # decided on the notice's price, with its age
    assert out.reads == ["BOSCHLTD"]  # ...but it may predate the second event: read again


def test_an_event_no_newer_than_what_is_known_needs_no_read() -> None:
    core = make_core()
    core.event(opened(bosch(3, opened_rev=3)))
    assert core.event(event("monitored_again", rev=3)).reads == []
    assert core.event(event("monitored_again", rev=4)).reads == ["BOSCHLTD"]


def test_a_sweep_that_read_before_an_open_keeps_the_opened_position() -> None:
    core = make_core()
    sweep = core.sweep(LIVE)
    core.check_slice(sweep, snapshot(1, long_kaynes(rev=1, opened_rev=1)), NOW)
    core.event(opened(bosch(2, opened_rev=2)))  # opened after the sweep's read: its event is newer news
    assert {p.symbol for p in core.end_sweep(sweep)} == {"KAYNES", "BOSCHLTD"}
    assert len(core.notice(notice("690.00"), NOW).closes) == 1


def test_a_sweep_that_read_before_a_close_does_not_bring_the_position_back() -> None:
    core = make_core()
    core.event(opened(bosch(1)))
    core.event(event("closing", rev=2))  # claimed elsewhere (the api)
    assert core.watched == {}
    sweep = core.sweep(LIVE)
    core.check_slice(
        sweep, snapshot(1, bosch(1), price="690.00"), NOW
    )  # read before the claim: older than what is known
    assert sweep.report.checked == 0 and sweep.out == Output()
    assert core.end_sweep(sweep) == [] and core.notice(notice("690.00"), NOW).closes == []


def test_a_sweep_forgets_what_its_read_found_not_open_unless_it_is_newer() -> None:
    core = make_core()
    core.event(opened(bosch(1)))
    core.event(opened(long_kaynes(rev=6, opened_rev=6)))
    sweep = core.sweep(LIVE)
    core.check_slice(
        sweep, snapshot(5), NOW
    )  # positions:open read at rev 5: BOSCHLTD was gone by then, KAYNES not yet there
    assert [p.symbol for p in core.end_sweep(sweep)] == ["KAYNES"]


def test_a_reopen_seen_before_the_previous_close_ends_is_decided_at_once() -> None:
    core = make_core()
    first = bosch(1)
    core.event(opened(first))
    assert len(core.notice(notice("690.00"), NOW).closes) == 1
    core.event(event("closing", rev=2))
    core.event(event("closed", rev=3))
    second = bosch(4, opened_rev=4, stop_loss=70000)
    core.event(opened(second))  # the new position's event beats the old close's task ending
    out = core.notice(notice("695.00"), NOW)
    assert [c.position for c in out.closes] == [second]  # the old close holds nothing back
    core.settled(first)  # the old close's task ends now
    core.ended(first)
    assert core.busy(second) and core.notice(notice("690.00"), NOW).closes == []


def test_a_failed_close_waits_for_its_backoff_and_a_stale_read_does_not_undo_it() -> None:
    core = make_core()
    position = bosch(1)
    core.event(opened(position))
    assert len(core.notice(notice("690.00"), NOW).closes) == 1
    core.held_back(position, NOW + 1.0, "broker answered 503")
    core.ended(position)
    assert core.notice(notice("690.00"), NOW + 0.5).closes == []
    sweep = core.sweep(LIVE)  # read before the claim: the same rev, without the backoff
    core.check_slice(sweep, snapshot(1, position, price="690.00"), NOW + 0.5)
    assert sweep.report.triggered == 0
    assert len(core.notice(notice("690.00"), NOW + 1.1).closes) == 1


def test_a_new_access_token_lifts_the_backoff_once() -> None:
    core = make_core()
    core.event(opened(bosch(1, next_attempt_at=NOW + 60)))
    assert core.notice(notice("690.00"), NOW).closes == []
    assert lines(core.new_token()) == ["[INFO] New access token: retrying the close of BOSCHLTD now"]
    assert len(core.notice(notice("690.00"), NOW).closes) == 1


def test_layer_3_is_said_once_per_outage_and_recorded_on_the_position() -> None:
    core = make_core()
    sweep = core.sweep(DOWN)
    out = core.check_slice(sweep, snapshot(1, bosch(1)), NOW)  # no cached price at all
    assert lines(out) == [
        "[WARNING] Feed is not live: checking SL/TP on cached prices",
        "[FALLBACK] Price cache expired for BOSCHLTD",
        "[WARNING] Can't monitor BOSCHLTD - no fresh prices",
    ]
    assert out.marks == [Mark("BOSCHLTD", NOW)] and sweep.report.unmonitored == 1
    assert core.check_slice(core.sweep(DOWN), snapshot(2, bosch(2, unmonitored_since=NOW)), NOW) == Output()
    back = core.check_slice(core.sweep(DOWN), snapshot(2, bosch(2, unmonitored_since=NOW), price="720.00"), NOW)
    assert back.marks == [Mark("BOSCHLTD", None, PriceSource.CACHED)]
    assert lines(back) == [
        "[INFO] Monitoring BOSCHLTD again: cached price available",
        "[FALLBACK] Using cached price for BOSCHLTD: ₹720.00 (0s old)",
    ]


def test_a_malformed_record_is_reported_once() -> None:
    core = make_core()
    broken = MalformedRecord("position:BROKEN: side sideways")
    out = core.check_slice(core.sweep(LIVE), snapshot(1, broken), NOW)
    assert out.malformed == [("BROKEN", str(broken))]
    assert out.lines[-1] == Line("ERROR", f"Skipping malformed record position:BROKEN: {broken}")
    assert core.check_slice(core.sweep(LIVE), snapshot(1, broken), NOW).malformed == []


def test_a_claim_is_reconciled_only_once_stuck_or_due() -> None:
    core = make_core(monitor_stuck_close_s=30.0)
    claimed = bosch(2, state=PositionState.CLOSING, claim_id="c1", claimed_at=NOW)
    assert (
        core.check_slice(core.sweep(LIVE), snapshot(2, claimed), NOW + 1).reconciles == []
    )  # young: its closer may act
    assert core.check_slice(core.sweep(LIVE), snapshot(2, claimed), NOW + 30).reconciles == [claimed]
    assert (
        core.check_slice(core.sweep(LIVE), snapshot(2, claimed), NOW + 60).reconciles == []
    )  # its reconcile is in flight
    core.ended(claimed)
    core.unconfirmed(claimed, "c1", NOW + 2)  # a close here ended unconfirmed: settle it when due
    assert core.check_slice(core.sweep(LIVE), snapshot(2, claimed), NOW + 2).reconciles == [claimed]


def test_a_failed_close_keeps_the_released_record_when_its_read_landed_first() -> None:
    core = make_core()
    position = bosch(1)
    core.event(opened(position))
    core.notice(notice("690.00"), NOW)
    core.event(event("closing", rev=2))
    assert core.event(event("close_failed")).reads == ["BOSCHLTD"]
    released = bosch(3, next_attempt_at=NOW + 5, close_attempts=1, last_error="broker answered 503")
    core.read("BOSCHLTD", 3, released, NOW)  # the release as Redis holds it, before the close's task ends
    core.held_back(position, NOW + 1, "broker answered 503")  # the task's own note: older than the record read
    assert core.watched == {"BOSCHLTD": released}


def test_a_read_from_before_a_reconcile_settled_the_claim_does_not_reconcile_it_again() -> None:
    core = make_core(monitor_stuck_close_s=30.0)
    claimed = bosch(2, state=PositionState.CLOSING, claim_id="c1", claimed_at=NOW)
    sweep = core.sweep(LIVE)  # its read of the claim began before the reconcile below reopened it
    assert core.check_slice(core.sweep(LIVE), snapshot(2, claimed), NOW + 30).reconciles == [claimed]
    core.reconciled(claimed, closed=False)
    core.ended(claimed)
    assert core.check_slice(sweep, snapshot(2, claimed), NOW + 30).reconciles == []
    reclaimed = bosch(5, state=PositionState.CLOSING, claim_id="c2", claimed_at=NOW)  # a later claim, stuck too
    assert core.check_slice(core.sweep(LIVE), snapshot(5, reclaimed), NOW + 30).reconciles == [reclaimed]
