"""The one freshness rule: the price's own age, the feed's liveness (status and heartbeat), the instrument's own."""

from __future__ import annotations

import pytest

from libs.common.freshness import (
    TRUTH_FIELDS,
    FeedLiveness,
    Freshness,
    FreshnessPolicy,
    PriceTruth,
    Verdict,
    feed_liveness_of,
)
from libs.common.models import FeedState, FeedStatus, PriceSource
from libs.common.settings import Settings

NOW = 1_000_000.0
POLICY = FreshnessPolicy(stale_after_s=30, expire_after_s=300, heartbeat_max_age_s=3)
LIVE = FeedLiveness(True, "WebSocket live")
DOWN = FeedLiveness(False, "WebSocket reconnecting")


def truth(age_s: float, **fields: str) -> PriceTruth:
    return PriceTruth.from_fields({"ltp": "575.00", "as_of": repr(NOW - age_s), **fields})


@pytest.mark.parametrize(
    ("age_s", "feed", "verdict", "source"),
    [
        (1, LIVE, Verdict.LIVE, PriceSource.LIVE),
        (31, LIVE, Verdict.CACHED_STALE, PriceSource.STALE),  # a live feed no longer vouching: its true age
        (1, DOWN, Verdict.CACHED_FRESH, PriceSource.CACHED),
        (30, DOWN, Verdict.CACHED_STALE, PriceSource.STALE),
        (300, LIVE, Verdict.EXPIRED, None),
        (300, DOWN, Verdict.EXPIRED, None),
    ],
)
def test_age_and_feed_decide_the_layer(
    age_s: float, feed: FeedLiveness, verdict: Verdict, source: PriceSource | None
) -> None:
    judged = POLICY.judge(truth(age_s), NOW, feed)
    assert (judged.verdict, judged.source) == (verdict, source)
    assert judged.age_s == pytest.approx(age_s)
    assert judged.reason


@pytest.mark.parametrize(
    ("price", "feed", "status", "source", "is_stale"),
    [
        (truth(1), LIVE, "fresh", PriceSource.LIVE, False),
        (truth(1), DOWN, "fresh", PriceSource.CACHED, False),
        (truth(1, rest_at=repr(NOW - 1)), DOWN, "fresh", PriceSource.REST, False),
        (truth(1, silent_since=repr(NOW), silent_reason="no ticks"), LIVE, "fresh", PriceSource.CACHED, True),
        (truth(31), LIVE, "stale", PriceSource.STALE, True),
        (truth(300), LIVE, "expired", None, True),
        (None, LIVE, "expired", None, True),
    ],
)
def test_each_verdict_carries_its_status_source_and_staleness(
    price: PriceTruth | None, feed: FeedLiveness, status: str, source: PriceSource | None, is_stale: bool
) -> None:
    """What health and the closes read of a verdict is set with it by `judge` (fields, not properties)."""
    judged = POLICY.judge(price, NOW, feed)
    assert (judged.status, judged.source, judged.is_stale) == (status, source, is_stale)
    assert len(judged) == len(Freshness._fields) and isinstance(judged, Freshness)
    assert isinstance(price, PriceTruth | None) and (price is None or len(price) == len(PriceTruth._fields))


def test_no_price_is_expired_with_a_reason() -> None:
    judged = POLICY.judge(None, NOW, LIVE)
    assert (judged.verdict, judged.age_s, judged.reason, judged.status) == (
        Verdict.EXPIRED,
        None,
        "no cached price",
        "expired",
    )


def test_a_killed_feed_leaves_connected_behind_but_its_heartbeat_ages() -> None:
    connected = FeedStatus(state=FeedState.LIVE, connected=True)
    assert POLICY.feed(connected, 0.5).live
    killed = POLICY.feed(connected, 4.0)
    assert not killed.live and "heartbeat" in killed.reason
    assert not POLICY.feed(connected, None).live
    assert not POLICY.feed(FeedStatus(state=FeedState.RECONNECTING), 0.5).live
    judged = POLICY.judge(truth(20), NOW, killed)
    assert (judged.source, judged.age_s) == (PriceSource.CACHED, pytest.approx(20))


def test_a_silent_instrument_is_cached_with_its_true_age_even_on_a_live_feed() -> None:
    reason = "no tick for 31s while NSE_EQ trades"
    silent = truth(31, silent_since=repr(NOW - 31), silent_reason=reason)
    judged = POLICY.judge(silent, NOW, LIVE)
    assert (judged.verdict, judged.source, judged.reason, judged.is_stale) == (
        Verdict.CACHED_STALE,
        PriceSource.STALE,
        reason,
        True,
    )
    young = POLICY.judge(truth(5, silent_since=repr(NOW - 5), silent_reason=reason), NOW, LIVE)
    assert (young.source, young.status, young.is_stale) == (PriceSource.CACHED, "fresh", True)
    # A newer tick moved as_of past silent_since: the instrument is live again.
    ticking = POLICY.judge(truth(1, silent_since=repr(NOW - 31), silent_reason=reason), NOW, LIVE)
    assert (ticking.verdict, ticking.is_stale) == (Verdict.LIVE, False)


def test_a_rest_price_is_layer_2b_while_the_websocket_is_down() -> None:
    rest = truth(1, rest_at=repr(NOW - 1))
    judged = POLICY.judge(rest, NOW, DOWN)
    assert (judged.verdict, judged.source) == (Verdict.CACHED_FRESH, PriceSource.REST)
    assert "REST" in judged.reason
    assert POLICY.judge(truth(40, rest_at=repr(NOW - 40)), NOW, DOWN).source is PriceSource.STALE
    # a tick or vouch newer than the REST write: not a REST price any more
    assert not truth(1, rest_at=repr(NOW - 5)).rest


@pytest.mark.parametrize("ltp", ["1e26", "-5.00", "0", "nan", "inf", "abc"])
def test_absurd_values_are_refused(ltp: str) -> None:
    with pytest.raises(ValueError, match="price"):
        PriceTruth.from_fields({"ltp": ltp, "as_of": repr(NOW)})


def test_a_corrupt_time_is_refused() -> None:
    with pytest.raises(ValueError, match="not a time"):
        PriceTruth.from_fields({"ltp": "575.00", "as_of": "nan"})


def test_a_row_in_truth_fields_order_reads_as_its_fields_do() -> None:
    fields = {"ltp": "575.05", "as_of": repr(NOW - 3), "silent_since": repr(NOW - 3), "silent_reason": "halted"}
    row = [fields.get(name) for name in TRUTH_FIELDS]
    assert PriceTruth.from_row(row) == PriceTruth.from_fields(fields) == PriceTruth(57505, NOW - 3, "halted", False)
    with pytest.raises(ValueError, match="missing"):
        PriceTruth.from_row([None, repr(NOW), None, None, None])


def test_the_feed_liveness_from_raw_reads_a_caller_made_itself() -> None:
    live = FeedStatus(state=FeedState.LIVE, connected=True).to_redis()
    assert feed_liveness_of(POLICY, live, repr(NOW - 1), NOW) == LIVE
    assert not feed_liveness_of(POLICY, live, None, NOW).live  # no heartbeat: the feed process is down
    corrupt = feed_liveness_of(POLICY, {**live, "state": "dancing"}, repr(NOW), NOW)
    assert not corrupt.live and corrupt.reason.startswith("corrupt feed status")


def test_the_heartbeat_limit_is_three_beats_at_least_two_seconds_within_the_ttl() -> None:
    def limit(**values: float) -> float:
        return FreshnessPolicy.from_settings(Settings(_env_file=None, **values)).heartbeat_max_age_s  # type: ignore[call-arg,arg-type]

    assert limit() == 3.0  # the defaults: 1 s beats, 10 s TTL
    assert limit(heartbeat_interval_s=0.2, heartbeat_ttl_s=2) == 2.0
    assert limit(heartbeat_interval_s=5, heartbeat_ttl_s=10) == 10.0
