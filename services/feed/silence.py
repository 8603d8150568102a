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
        self._segment_of: dict[str, str] = {}  # instrument key -> its segment (`NSE_EQ|...` -> `NSE_EQ`)

    def saw(self, ticks: Iterable[Tick], at: float) -> None:
        """Record the arrival of real ticks (hot path: one dict store per tick)."""
        last = self.last_tick
        for tick in ticks:
            last[tick.symbol] = at

    def review(
        self, wanted: Mapping[str, str], now: float, connected_at: float, segments: Mapping[str, int] | None
    ) -> Review:
        """Decide for every wanted symbol (SYMBOL -> instrument key) on a live link connected at `connected_at`.

        It runs on the feed's event loop every vouch interval over every wanted symbol (5,000), so ticks wait
        while it runs: one cheap pass finds the symbols quiet for the window; only those (few) are judged.
        """
        window_s = self.window_s
        last_of = self.last_tick.get
        segment_of = self._segment_of
        # A quiet symbol is silent when another instrument of its segment ticked within the window: any symbol of
        # the segment that is not quiet itself is such an other one.
        ticking: set[str] = set()
        quiet: list[tuple[str, str, float]] = []  # (symbol, segment, seconds quiet), in `wanted` order
        for symbol, key in wanted.items():
            at = last_of(symbol, 0.0)
            quiet_s = now - (at if at > connected_at else connected_at)
            segment = segment_of.get(key) or self._segment(key)
            if quiet_s < window_s:
                ticking.add(segment)
            else:
                quiet.append((symbol, segment, quiet_s))
        review = Review()
        was_silent = self.silent
        silent_now: set[str] = set()
        for symbol, segment, quiet_s in quiet:
            if segment in ticking and (segments is None or segments.get(segment, NORMAL_OPEN) == NORMAL_OPEN):
                silent_now.add(symbol)
                if symbol not in was_silent:
                    reason = f"no tick for {quiet_s:.0f}s while {segment} trades (halted, suspended or dropped)"
                    review.silent[symbol] = reason
        review.vouch = [s for s in wanted if s not in silent_now] if silent_now else list(wanted)
        if was_silent:
            review.back = [s for s in wanted if s in was_silent and s not in silent_now]
            for symbol in [s for s in was_silent if s not in silent_now]:  # ticking again, or no longer wanted
                del was_silent[symbol]
        was_silent.update(review.silent)
        if not self.last_tick.keys() <= wanted.keys():
            self.last_tick = {s: at for s, at in self.last_tick.items() if s in wanted}
        return review

    def _segment(self, key: str) -> str:
        segment = self._segment_of[key] = key.partition("|")[0]
        return segment
