from __future__ import annotations

import random

from services.feed.outage import Outage


def outage(seed: int, base: float = 5.0, cap: float = 10.0, budget: int = 10, *, at_once: bool = False) -> Outage:
    return Outage(base, cap, budget, random.Random(seed), at_once)


def test_defaults_retry_every_5_to_10_seconds_and_never_below_the_base() -> None:
    for seed in range(200):
        o = outage(seed)
        delays = [o.next_attempt() for _ in range(25)]
        assert all(5.0 <= d <= 10.0 for d in delays), delays


def test_after_a_drop_the_first_attempt_goes_at_once_four_quick_ones_follow_then_the_guide_backoff() -> None:
    for seed in range(100):
        o = outage(seed, at_once=True)
        delays = [o.next_attempt() for _ in range(12)]
        assert delays[0] == 0.0
        assert all(0.25 <= d <= 0.5 for d in delays[1:5]), delays  # a 20th to a 10th of the base
        assert sum(delays[1:5]) >= 0.99  # they span a 1 s blip, each at most 0.5 s after the one before
        assert all(5.0 <= d <= 10.0 for d in delays[5:]), delays
        assert (o.attempt_in_cycle, o.cycle) == (2, 2)  # the at-once attempt is attempt 1/10, counted as such


def test_the_delay_grows_from_the_base_towards_the_cap() -> None:
    firsts, laters = [], []
    for seed in range(300):
        o = outage(seed, base=1.0, cap=30.0)
        delays = [o.next_attempt() for _ in range(6)]
        assert 1.0 <= delays[0] <= 3.0
        firsts.append(delays[0])
        laters.append(delays[5])
    assert sum(laters) / len(laters) > 3 * sum(firsts) / len(firsts)
    assert max(laters) <= 30.0


def test_jitter_spreads_clients_that_dropped_together() -> None:
    delays = {round(outage(seed).next_attempt(), 3) for seed in range(50)}
    assert len(delays) > 40


def test_attempts_are_counted_in_cycles_of_the_budget_and_go_on_at_the_cap() -> None:
    o = outage(1, base=5.0, cap=10.0, budget=10)
    shown = []
    for _ in range(23):
        delay = o.next_attempt()
        shown.append((o.attempt_in_cycle, o.cycle))
        if o.attempts > 10:
            assert 8.0 <= delay <= 10.0
    assert shown[0] == (1, 1)
    assert shown[9] == (10, 1)
    assert shown[10] == (1, 2)
    assert shown[22] == (3, 3)
    assert o.attempts == 23


def test_auth_retries_are_slow_with_jitter() -> None:
    o = outage(3)
    values = [o.auth_retry(60.0) for _ in range(100)]
    assert all(54.0 <= v <= 66.0 for v in values)
    assert len({round(v, 2) for v in values}) > 50


def test_after_the_budget_clients_that_dropped_together_still_spread() -> None:
    """The long outage: many clients past their attempt budget must not retry in lock-step at the cap."""
    clients = [outage(seed, base=5.0, cap=10.0, budget=10) for seed in range(50)]
    for _ in range(10):
        for client in clients:
            client.next_attempt()
    for _ in range(5):
        delays = [client.next_attempt() for client in clients]
        assert all(8.0 <= d <= 10.0 for d in delays)
        assert len({round(d, 3) for d in delays}) > 40
        assert max(delays) - min(delays) > 1.0  # spread over most of the 8-10 s band
