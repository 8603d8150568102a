"""Per-instrument truth: which subscribed instruments a healthy connection may vouch for.

Upstox sends an instrument's data only when it trades, so silence alone proves nothing. The rule (README,
"Per-instrument truth"): an instrument is *silent* when its segment trades and it does not, that is

- `market_info` says its segment is NORMAL_OPEN (or has not said anything yet), and
- another subscribed instrument of the same segment ticked within the detection window, and
- this instrument has not ticked for the window (`HALT_DETECT_S` less one vouch interval, so the report comes
  no later than `HALT_DETECT_S` after its last tick).

A silent instrument is not vouched for: its price is dated back to its last real tick and ages truly, reported
with a reason (health `is_stale`, an event, a `[WARNING]` line). Every other subscribed instrument is plausibly
quiet and is vouched for while the link is healthy. An instrument alone in its segment can never be found silent
this way (nothing to compare it with): it is vouched for like a quiet one, which the README states.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from libs.common.price_cache import Tick
from services.feed.decode import NORMAL_OPEN


@dataclass(slots=True)
class Review:
    """What one review found: symbols to vouch for, newly silent ones (with the reason), ones ticking again."""

    vouch: list[str] = field(default_factory=list)
    silent: dict[str, str] = field(default_factory=dict)
    back: list[str] = field(default_factory=list)


class InstrumentWatch:
    """Remembers when each symbol last ticked (arrival, epoch s) and reviews the subscribed set."""

    def __init__(self, halt_detect_s: float, review_every_s: float) -> None:
        self.window_s = max(halt_detect_s - review_every_s, review_every_s)
        self.last_tick: dict[str, float] = {}
        self.silent: dict[str, str] = {}

    def saw(self, ticks: Iterable[Tick], at: float) -> None:
        """Record the arrival of real ticks (hot path: one dict store per tick)."""
        last = self.last_tick
        for tick in ticks:
            last[tick.symbol] = at

    def review(
        self, wanted: Mapping[str, str], now: float, connected_at: float, segments: Mapping[str, int] | None
    ) -> Review:
        """Decide for every wanted symbol (SYMBOL -> instrument key) on a live link connected at `connected_at`."""
        window_s = self.window_s
        last_of = {s: max(self.last_tick.get(s, 0.0), connected_at) for s in wanted}
        # Per segment, the two newest ticks: "another instrument ticked" must not count the instrument itself.
        newest: dict[str, list[tuple[float, str]]] = {}
        for symbol, key in wanted.items():
            top = newest.setdefault(key.partition("|")[0], [])
            top.append((last_of[symbol], symbol))
            if len(top) > 2:
                top.sort(reverse=True)
                del top[2:]
        review = Review()
        for symbol, key in wanted.items():
            segment = key.partition("|")[0]
            quiet_s = now - last_of[symbol]
            reason = None
            if quiet_s >= window_s and (segments is None or segments.get(segment, NORMAL_OPEN) == NORMAL_OPEN):
                others = [at for at, other in newest[segment] if other != symbol]
                if others and now - others[0] < window_s:
                    reason = f"no tick for {quiet_s:.0f}s while {segment} trades (halted, suspended or dropped)"
            if reason is None:
                review.vouch.append(symbol)
                if self.silent.pop(symbol, None) is not None:
                    review.back.append(symbol)
            elif symbol not in self.silent:
                self.silent[symbol] = review.silent[symbol] = reason
        for gone in [s for s in self.silent if s not in wanted]:
            del self.silent[gone]
        self.last_tick = {s: at for s, at in self.last_tick.items() if s in wanted}
        return review
