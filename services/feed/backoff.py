"""Reconnect delays: decorrelated jitter from a base to a cap, counted per outage, never giving up.

Each delay is drawn uniformly between the base and three times the previous delay, capped, so the
first retry comes after about `base` (5 s by default), later ones grow, and none exceeds the cap
(10 s by default: "retries every 5-10 s" as the guide shows). Drawing below the cap (instead of
clamping a wider draw to it) keeps two clients that dropped together from retrying in lock-step.

After the attempt budget of a cycle (10), the outage goes on in new cycles at the cap.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Outage:
    """Attempt accounting and delays for one outage (from a drop until a connection is live again)."""

    base_s: float
    cap_s: float
    budget: int
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0
    _previous_s: float = 0.0  # 0: no attempt yet, the first draw is between base and 3 x base

    @property
    def attempt_in_cycle(self) -> int:
        """1..budget: the N of the guide's `attempt N/M`."""
        return (self.attempts - 1) % self.budget + 1

    @property
    def cycle(self) -> int:
        """1 for the first `budget` attempts, 2 for the next ones, ..."""
        return (self.attempts - 1) // self.budget + 1

    def next_attempt(self) -> float:
        """Count one more attempt and return the delay (s) to wait before it."""
        self.attempts += 1
        if self.attempts > self.budget:
            # Budget spent: keep trying at the cap, with a little jitter below it.
            delay = self.rng.uniform(max(self.base_s, 0.8 * self.cap_s), self.cap_s)
        else:
            upper = min(self.cap_s, 3 * max(self.base_s, self._previous_s))
            delay = self.rng.uniform(self.base_s, upper)
        self._previous_s = delay
        return delay

    def jittered(self, delay_s: float) -> float:
        """`delay_s` +/- 10 %, for the slow retries after a rejected token."""
        return delay_s * self.rng.uniform(0.9, 1.1)
