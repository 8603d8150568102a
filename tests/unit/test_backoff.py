from __future__ import annotations

import random

import pytest

from libs.common.backoff import Backoff


def test_ceilings_double_from_the_base_up_to_the_cap() -> None:
    backoff = Backoff(1.0, 30.0)
    assert [backoff.compute(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.compute(10_000) == 30.0  # a very long outage: no overflow


def test_jitter_takes_up_to_its_share_off_the_ceiling_and_spreads_the_draws() -> None:
    backoff = Backoff(1.0, 30.0, jitter=0.25, rng=random.Random(7))
    for failures, ceiling in ((1, 1.0), (3, 4.0), (9, 30.0)):
        draws = [backoff.compute(failures) for _ in range(200)]
        assert all(0.75 * ceiling <= d <= ceiling for d in draws)
        assert max(draws) - min(draws) > 0.2 * ceiling  # spread over most of the band, not one value
        assert len({round(d, 6) for d in draws}) > 150


def test_the_floor_raises_the_lower_end_without_piling_draws_on_it() -> None:
    backoff = Backoff(10.0, 10.0, jitter=1.0, floor_s=5.0, rng=random.Random(3))
    draws = [backoff.compute(1) for _ in range(400)]
    assert all(5.0 <= d <= 10.0 for d in draws)
    assert sum(d < 5.01 for d in draws) < 10  # uniform in [5, 10], not clamped onto 5
    assert sum(d < 7.5 for d in draws) > 150


def test_a_floor_above_the_ceiling_gives_the_ceiling() -> None:
    assert Backoff(1.0, 2.0, floor_s=5.0).compute(1) == 1.0


@pytest.mark.parametrize(("base", "cap", "jitter"), [(0.0, 1.0, 0.0), (2.0, 1.0, 0.0), (1.0, 2.0, 1.5)])
def test_nonsense_is_refused(base: float, cap: float, jitter: float) -> None:
    with pytest.raises(ValueError, match="invalid backoff"):
        Backoff(base, cap, jitter)


def test_around_draws_within_its_spread_of_each_step() -> None:
    backoff = Backoff.around(1.0, 30.0, 0.2, random.Random(5))
    for failures, step in ((1, 1.0), (2, 2.0), (4, 8.0), (12, 30.0)):
        draws = [backoff.compute(failures) for _ in range(300)]
        assert all(0.8 * step - 1e-9 <= d <= 1.2 * step + 1e-9 for d in draws)
        assert min(draws) < 0.85 * step and max(draws) > 1.15 * step  # both sides of the step
