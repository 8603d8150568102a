"""What the monitor's core hands out: what to do after an input (`Output` and its parts) and a sweep in progress.

Plain records, no behaviour: `services.monitor.core` fills them, `services.monitor.monitor` carries them out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from libs.common.closing import CloseRequest
from libs.common.models import Position, PriceSource


@dataclass(frozen=True, slots=True)
class Line:
    """One log line: a loguru `level`, printed with the guide's `tag` when it has one (`[SL]`, `[FALLBACK]`)."""

    level: str
    message: str
    tag: str = ""


@dataclass(frozen=True, slots=True)
class Close:
    """Start closing `position` (the close is in flight from now until `Core.ended`)."""

    position: Position
    request: CloseRequest


@dataclass(frozen=True, slots=True)
class Mark:
    """Record on the position that the monitor lost its prices (`since`) or has them again (None)."""

    symbol: str
    since: float | None
    source: PriceSource | None = None


@dataclass(slots=True)
class Output:
    """What the monitor must do after one input, in this order: log, start closes and reconciles, read records,
    then (the sweep only) write marks and malformed-record events."""

    lines: list[Line] = field(default_factory=list)
    closes: list[Close] = field(default_factory=list)
    reconciles: list[Position] = field(default_factory=list)
    reads: list[str] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    malformed: list[tuple[str, str]] = field(default_factory=list)  # (symbol, error) of position records
    wake_safety_net: bool = False
    tick_as_of: float | None = None  # a notice that reached a decision: when its prices were current


@dataclass(slots=True)
class SweepReport:
    """What one sweep saw and did."""

    feed_live: bool = False
    checked: int = 0
    triggered: int = 0
    unmonitored: int = 0
    malformed: int = 0
    reconciling: int = 0
    duration_ms: float = 0.0


@dataclass(slots=True)
class Sweep:
    """One sweep in progress: its report, what its read listed open (as of the revision `rev`), lines so far."""

    report: SweepReport
    out: Output = field(default_factory=Output)
    seen: set[str] = field(default_factory=set)
    rev: int | None = None
