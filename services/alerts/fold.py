"""Folding: at most one message per alert condition per ALERT_REPEAT_S, with a count of what was folded.

A condition (the feed is down, BOSCHLTD cannot be monitored, ...) is raised and ended by changes. The first
change after a quiet window is sent at once; changes inside the window are only counted, and `flush` sends
one message about the current state (with the count) when the window has passed. So a flapping feed gives a
bounded number of messages, the last one always telling the current state. Pure functions: the caller
stores `ConditionState` (JSON) in Redis and applies them atomically.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from services.alerts.table import Alert, render


@dataclass(frozen=True, slots=True)
class ConditionState:
    active: bool = False
    type: str = ""  # alert type of the latest change: its entry renders the message
    facts: dict[str, Any] = field(default_factory=dict)
    since: float = 0.0  # epoch s the condition was last raised
    sent_at: float | None = None  # epoch s of the last message about it
    pending: int = 0  # changes not reported yet

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), default=str)

    @classmethod
    def from_json(cls, text: str | None) -> ConditionState:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def change(
    state: ConditionState,
    *,
    active: bool,
    alert_type: str,
    facts: dict[str, Any],
    now: float,
    repeat_s: float,
    repeats_count: bool = False,
    silent: bool = False,
) -> tuple[ConditionState, Alert | None]:
    """Raise (`active`) or end the condition. Returns the new state and the message to send, if any.

    Raising an active condition changes nothing unless `repeats_count` (each event is an occurrence, e.g. a
    close that failed again). `silent` ends it without a message (a worse condition superseded it).
    """
    if active == state.active and not (active and repeats_count):
        return state, None
    if silent and not active:
        return replace(state, active=False, pending=0), None
    facts = dict(facts)
    since = state.since
    if active and not state.active:
        since = float(facts.get("since_epoch", now))
    if not active:
        facts["lasted"] = human_duration(now - state.since)
    new = replace(state, active=active, type=alert_type, facts=facts, since=since, pending=state.pending + 1)
    return flush(new, now=now, repeat_s=repeat_s)


def flush(
    state: ConditionState, *, now: float, repeat_s: float, facts: dict[str, Any] | None = None
) -> tuple[ConditionState, Alert | None]:
    """Send what was folded once the window since the last message has passed; `facts` (the numbers as they are
    now) replace those of the last change while the condition is active."""
    if not state.pending or (state.sent_at is not None and now - state.sent_at < repeat_s):
        return state, None
    if facts is not None and state.active:
        state = replace(state, facts=facts)
    alert = render(state.type, state.facts, now, folded=state.pending - 1)
    return replace(state, sent_at=now, pending=0), alert


def human_duration(seconds: float) -> str:
    """'45 s', '5 min 12 s', '2 h 3 min'."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"
