"""Backoff: how long to wait before the next try, the one way every service computes it.

`Backoff(base_s, cap_s, jitter=..., floor_s=...).compute(failures)`: after `failures` consecutive failures
(1 = the first) the ceiling is `base_s`, 2 x, 4 x, ... up to `cap_s`, and the wait is that ceiling less up to
`jitter` of it, drawn uniformly, never below `floor_s`. Drawing below the ceiling (instead of adding on top and
clamping to the cap) keeps clients that failed together from retrying in lock-step, even at the cap.

Used by the feed's reconnects (the guide's "5-10 s", `floor_s` = its base), the monitor's close retries and
pub/sub resubscribes, the safety net's GTT retries, alert deliveries and the restart of a failed service loop
(libs/common/service.py). Not tenacity: each of these retries is either a schedule kept in Redis (a close's
`next_attempt_at`) or a loop with the guide's own log lines around each wait, which a retrying decorator hides.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

_MAX_DOUBLINGS = 60  # 2**60 x any base is past any cap: no float overflow for a very long outage


@dataclass
class Backoff:
    """Exponential backoff with jitter below the ceiling; `compute(failures)` is the wait in seconds."""

    base_s: float  # the ceiling after the first failure
    cap_s: float  # the ceiling never grows past this
    jitter: float = 0.0  # the share of the ceiling that may be taken off at random: 0 none, 1 all of it
    floor_s: float = 0.0  # never wait less than this (the feed's "at least the base")
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if not (self.base_s > 0 and self.cap_s >= self.base_s and 0.0 <= self.jitter <= 1.0):
            raise ValueError(f"invalid backoff: base {self.base_s}, cap {self.cap_s}, jitter {self.jitter}")

    @classmethod
    def around(cls, base_s: float, cap_s: float, spread: float, rng: random.Random | None = None) -> Backoff:
        """Waits within +/- `spread` (a share) of base, 2 x base, ... up to the cap (+/- `spread` there too):
        drawn below a ceiling `spread` above each step."""
        return cls((1 + spread) * base_s, (1 + spread) * cap_s, 2 * spread / (1 + spread), rng=rng or random.Random())

    def ceiling(self, failures: int) -> float:
        """The longest wait after `failures` (>= 1) consecutive failures: base x 2**(failures - 1), capped."""
        return min(self.cap_s, self.base_s * 2.0 ** min(max(failures, 1) - 1, _MAX_DOUBLINGS))

    def compute(self, failures: int) -> float:
        """The wait after `failures` (>= 1) consecutive failures: uniform in [ceiling x (1 - jitter), ceiling],
        the lower end raised to `floor_s` (but not past the ceiling)."""
        ceiling = self.ceiling(failures)
        lowest = min(ceiling, max(self.floor_s, ceiling * (1.0 - self.jitter)))
        return lowest + (ceiling - lowest) * self.rng.random()
