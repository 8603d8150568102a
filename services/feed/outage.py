"""One outage of the feed (from a drop until a connection is live again): the guide's `attempt N/M` accounting and
the wait before each attempt, from the common `Backoff` (libs/common/backoff.py).

After a drop of a link that was live, attempt 1 goes at once (`Waiting 0.0 seconds`), as the official SDK does,
and the next `QUICK_ATTEMPTS` follow a twentieth to a tenth of the base apart (0.25-0.5 s by default): after a blip
of up to about 1.5 s the next attempt is at most 0.5 s away, so prices are fresh within a second of the network's
return, not after the 5-10 s backoff (the at-once attempt alone lands inside the blip; at 0.5-1 s apart a 1 s blip
cost up to ~1.2 s). That is a handful of calls per drop (the official SDK makes 5 at 1 s), so a server that is
really down still sees the guide's pace: within the attempt budget of a cycle (10), each wait is drawn between the
base (5 s) and a ceiling that starts at twice the base and doubles up to the cap (10 s), the guide's "retries every
5-10 s". After the budget the outage goes on in new cycles at the cap, drawn in its top fifth, so clients that
dropped together still spread out. A rejected token is retried slowly (`AUTH_RETRY_DELAY_S` +/- 10 %).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from libs.common.backoff import Backoff
from libs.common.settings import Settings

QUICK_ATTEMPTS = 4  # after the at-once attempt of a drop, before the guide's backoff


@dataclass
class Outage:
    """Attempt accounting and waits for one outage."""

    base_s: float
    cap_s: float
    budget: int
    rng: random.Random = field(default_factory=random.Random)
    at_once: bool = False  # attempt 1 without waiting
    attempts: int = 0

    def __post_init__(self) -> None:
        self._within_budget = Backoff(min(self.cap_s, 2 * self.base_s), self.cap_s, 1.0, self.base_s, self.rng)
        self._at_cap = Backoff(self.cap_s, self.cap_s, 0.2, self.base_s, self.rng)
        self._quick = Backoff(self.base_s / 10, self.base_s / 10, 0.5, rng=self.rng)  # a 20th to a 10th of the base

    @classmethod
    def from_settings(cls, settings: Settings, rng: random.Random, *, at_once: bool = False) -> Outage:
        return cls(
            settings.reconnect_base_delay_s,
            settings.reconnect_max_delay_s,
            settings.reconnect_attempts_per_cycle,
            rng,
            at_once,
        )

    @property
    def attempt_in_cycle(self) -> int:
        """1..budget: the N of the guide's `attempt N/M`."""
        return (self.attempts - 1) % self.budget + 1

    @property
    def cycle(self) -> int:
        """1 for the first `budget` attempts, 2 for the next ones, ..."""
        return (self.attempts - 1) // self.budget + 1

    def next_attempt(self) -> float:
        """Count one more attempt and return the wait (s) before it."""
        self.attempts += 1
        if self.attempts > self.budget:
            return self._at_cap.compute(1)
        if not self.at_once:
            return self._within_budget.compute(self.attempts)
        if self.attempts == 1:
            return 0.0
        if self.attempts <= 1 + QUICK_ATTEMPTS:
            return self._quick.compute(1)
        return self._within_budget.compute(self.attempts - 1 - QUICK_ATTEMPTS)

    def auth_retry(self, delay_s: float) -> float:
        """The wait before retrying a rejected token: `delay_s` +/- 10 %."""
        return Backoff.around(delay_s, delay_s, 0.1, self.rng).compute(1)
