"""Folding and the alert table, as pure functions (no Redis)."""

from __future__ import annotations

import string

from libs.common.settings import Settings
from services.alerts.fold import ConditionState, change, flush, human_duration
from services.alerts.table import ALERTS, Severity, alert_type, facts, render


def _flap(state: ConditionState, now: float, active: bool) -> tuple[ConditionState, str | None]:
    kind = "feed_down" if active else "feed_recovered"
    new, alert = change(state, active=active, alert_type=kind, facts={"down_for": "3 s"}, now=now, repeat_s=10)
    return new, alert.title if alert else None


def test_flapping_is_folded_to_one_message_per_window_with_counts_that_add_up() -> None:
    state, sent = ConditionState(), []
    for second in range(0, 30, 1):  # down on even seconds, up on odd ones, for 30 s
        state, title = _flap(state, float(second), active=second % 2 == 0)
        sent += [title] if title else []
        state, alert = flush(state, now=second + 0.5, repeat_s=10)
        sent += [alert.title] if alert else []
    state, alert = flush(state, now=100.0, repeat_s=10)
    sent += [alert.title] if alert else []
    assert sent == [
        "Feed down for 3 s",
        "Feed down for 3 s (9 more changes since the last message)",
        "Feed down for 3 s (9 more changes since the last message)",
        "Feed live again (8 more changes since the last message)",
    ]  # 4 messages + 9 + 9 + 8 folded = the 30 changes
    assert state.pending == 0 and not state.active


def test_a_change_after_a_quiet_window_is_sent_at_once_with_how_long_it_lasted() -> None:
    state, first = _flap(ConditionState(), 100.0, True)
    state, again = _flap(state, 101.0, True)  # still down: nothing new
    state, back = _flap(state, 400.0, False)
    assert first == "Feed down for 3 s" and again is None and back == "Feed live again"
    assert state.facts["lasted"] == "5 min 0 s"


def test_repeated_occurrences_count_and_a_silent_end_sends_nothing() -> None:
    def failed(s: ConditionState, now: float) -> tuple[ConditionState, object]:
        return change(s, active=True, alert_type="close_failed", facts={"symbol": "X"}, now=now, repeat_s=10,
                      repeats_count=True)  # fmt: skip

    state, first = failed(ConditionState(), 0.0)
    state, second = failed(state, 1.0)
    state, third = failed(state, 2.0)
    assert first is not None and second is None and third is None and state.pending == 2
    state, alert = flush(state, now=10.0, repeat_s=10)
    assert alert is not None and alert.title == "Close of X failed (1 more change since the last message)"
    state, ended = change(state, active=False, alert_type="closed", facts={}, now=11.0, repeat_s=10, silent=True)
    assert ended is None and not state.active and state.pending == 0
    assert ConditionState.from_json(state.to_json()) == state


def test_every_table_entry_renders_and_conditions_come_in_raise_end_pairs() -> None:
    conditions: dict[str, set[bool]] = {}
    for kind, rule in ALERTS.items():
        fields = {
            f for text in (rule.title, rule.body, rule.action) for _, f, _, _ in string.Formatter().parse(text) if f
        }
        alert = render(kind, dict.fromkeys(fields, "V"), 0.0)
        assert "?" not in alert.title + alert.body + alert.action and alert.heading().startswith("[")
        if rule.condition:
            conditions.setdefault(rule.condition, set()).add(rule.ends)
            assert rule.ends == (rule.severity is Severity.RECOVERED), kind
        for cleared in rule.clears:  # ended by another event without a message of its own
            conditions.setdefault(cleared, set()).add(True)
    assert all(ends == {True, False} for ends in conditions.values()), conditions


def test_events_map_to_their_alert_with_money_and_the_exact_close_command() -> None:
    settings = Settings(_env_file=None, api_port=8123)  # type: ignore[call-arg]
    record = {"closed_by": "external", "exit_price": 575.0, "pnl": -6195.0, "price_age_s": 45.2}
    event = {"kind": "closed", "symbol": "BOSCHLTD", "at": 1.0, "record": record}
    assert alert_type(event) == "external_close"
    assert alert_type({"kind": "closed", "record": {"closed_by": "monitor"}}) == "closed"
    assert alert_type({"kind": "close_failed", "outcome": "unknown"}) == "close_unknown"
    values = facts(event, settings)
    assert (values["exit_price"], values["pnl"], values["age"]) == ("₹575.00", "₹-6195.00", ", 45 s old")
    assert values["close_cmd"] == (
        "curl -s -X POST http://127.0.0.1:8123/api/v1/monitoring/emergency-close-position "
        """-H 'Content-Type: application/json' -d '{"symbol": "BOSCHLTD", "reason": "emergency"}'"""
    )
    assert human_duration(3725) == "1 h 2 min" and human_duration(44.6) == "45 s"


def test_a_folded_message_about_an_active_condition_carries_the_numbers_of_now() -> None:
    state, _ = _flap(ConditionState(), 0.0, True)
    state, _ = _flap(state, 1.0, False)
    state, _ = _flap(state, 2.0, True)
    state, alert = flush(state, now=10.0, repeat_s=10, facts={"down_for": "10 s"})
    assert alert is not None and alert.title == "Feed down for 10 s (1 more change since the last message)"
