"""The one rule for "is this price live, cached, stale or expired", used by the monitor, health, status and the
emergency close.

Three inputs decide it:
- the price's own age: seconds since it was last known current (`as_of`: a tick, a REST poll, or the feed
  vouching for a quiet instrument);
- the feed's liveness: `feed:status` says connected AND the feed process's heartbeat is recent (a killed
  feed leaves `connected` behind; its heartbeat stops);
- the instrument's own liveness: the feed marks an instrument silent (`silent_since`, `silent_reason`) when it
  stops ticking while its segment trades; until a newer tick, its price ages from its last real tick.

The verdict is one of live, cached-fresh, cached-stale, expired, with a reason a person can read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, NamedTuple

from redis.asyncio import Redis

from libs.common import keys
from libs.common.clock import Clock
from libs.common.models import FeedStatus, MalformedRecord, PriceSource
from libs.common.money import Paise, ltp_paise
from libs.common.settings import Settings

# A feed that missed this many heartbeats in a row (and at least HEARTBEAT_FLOOR_S) is not vouching for anything:
# stalled or killed. The floor keeps a loaded machine's late beat (tests compress beats to 0.2 s) from reading as
# an outage.
MISSED_BEATS = 3
HEARTBEAT_FLOOR_S = 2.0

# Fields of `price:SYMBOL` the verdict reads, in this order (readers HMGET them in one call).
TRUTH_FIELDS = ("ltp", "as_of", "silent_since", "silent_reason", "rest_at")


class Verdict(StrEnum):
    """The guide's layers for one price."""

    LIVE = "live"
    CACHED_FRESH = "cached-fresh"
    CACHED_STALE = "cached-stale"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class FeedLiveness:
    """Whether the feed vouches for prices now, and why (not)."""

    live: bool
    reason: str


# The verdicts below are built with `tuple.__new__`, in C: a NamedTuple's own constructor is a generated Python
# function, ~120 ns more per object, and health builds ~200 `PriceTruth` and `Freshness` a request (the field
# order is the class's: tests/unit/test_freshness.py reads every field of every verdict).
_new = tuple.__new__


class PriceTruth(NamedTuple):
    """What `price:SYMBOL` says about itself: the price, when it was last known current, whether the feed found
    the instrument silent (the reason), and whether the price came from the REST LTP poll.

    A NamedTuple, like `Freshness`: immutable, and built in a third of a frozen dataclass's time (health builds
    ~200 of each per request)."""

    ltp: Paise
    as_of: float
    silent: str | None = None
    rest: bool = False

    @classmethod
    def from_fields(cls, values: Mapping[str, str | None], *, parsed_ltp: Paise | None = None) -> PriceTruth:
        """From the hash's `TRUTH_FIELDS` (`parsed_ltp`: the `ltp` text already parsed by the caller).
        Raises ValueError for a malformed or absurd value."""
        return cls.from_row([values.get(name) for name in TRUTH_FIELDS], parsed_ltp=parsed_ltp)

    @classmethod
    def from_row(cls, row: Sequence[str | None], *, parsed_ltp: Paise | None = None) -> PriceTruth:
        """From the values of `TRUTH_FIELDS` in their order (an HMGET reply), without a dict per price.
        Raises ValueError for a malformed or absurd value."""
        ltp, as_of, silent_since, silent_reason, rest_at = row
        if ltp is None or as_of is None:
            raise ValueError("ltp or as_of missing")
        as_of_s = _finite(as_of)
        # Silent until a newer tick moves `as_of` past the moment the feed found it silent.
        silent = None
        if silent_since and as_of_s <= _finite(silent_since):
            silent = silent_reason or "instrument silent"
        rest = bool(rest_at) and _finite(str(rest_at)) >= as_of_s
        return _new(cls, (ltp_paise(ltp) if parsed_ltp is None else parsed_ltp, as_of_s, silent, rest))


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"not a time: {text!r}")
    return value


class Freshness(NamedTuple):
    """The verdict on one price: its layer, its true age (None without a price), why, whether REST gave it and
    whether the instrument was found silent; then what readers ask of it, set by `FreshnessPolicy.judge` (its only
    maker) with the verdict: plain fields, not properties, since health reads them for ~200 prices a request.

    - `status`: connection health's word for it: live and cached-fresh are fresh.
    - `source`: the decision source a close records; None when expired (the broker's fill decides).
    - `is_stale`: health's `is_stale`: not fresh, or the instrument was found silent.
    """

    verdict: Verdict
    age_s: float | None
    reason: str
    rest: bool
    silent: bool
    status: Literal["fresh", "stale", "expired"]
    source: PriceSource | None
    is_stale: bool


_NO_PRICE = Freshness(Verdict.EXPIRED, None, "no cached price", False, False, "expired", None, True)


@dataclass(frozen=True, slots=True)
class FreshnessPolicy:
    """The guide's thresholds (settings) applied to one price."""

    stale_after_s: float
    expire_after_s: float
    heartbeat_max_age_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> FreshnessPolicy:
        return cls(
            stale_after_s=settings.price_stale_after_s,
            expire_after_s=settings.price_cache_ttl_s,
            heartbeat_max_age_s=min(
                max(settings.heartbeat_interval_s * MISSED_BEATS, HEARTBEAT_FLOOR_S), settings.heartbeat_ttl_s
            ),
        )

    def feed(self, status: FeedStatus, heartbeat_age_s: float | None) -> FeedLiveness:
        """Live only when the status says connected and the feed process beat within `heartbeat_max_age_s`."""
        if not status.connected:
            return FeedLiveness(False, f"WebSocket {status.state.value}")
        if heartbeat_age_s is None:
            return FeedLiveness(False, "feed process down (heartbeat expired)")
        if heartbeat_age_s > self.heartbeat_max_age_s:
            return FeedLiveness(False, f"feed process silent for {heartbeat_age_s:.0f}s (heartbeat)")
        return FeedLiveness(True, "WebSocket live")

    def layer(self, age_s: float | None) -> Literal["fresh", "stale", "expired"]:
        """The guide's layer by age alone: fresh (< stale threshold), stale (< expiry), expired (or no price)."""
        if age_s is None or age_s >= self.expire_after_s:
            return "expired"
        return "stale" if age_s >= self.stale_after_s else "fresh"

    def judge(self, price: PriceTruth | None, now: float, feed: FeedLiveness) -> Freshness:
        """The verdict on `price` at `now` (epoch s)."""
        if price is None:
            return _NO_PRICE
        age_s = max(0.0, now - price.as_of)
        silent = price.silent is not None
        rest = price.rest
        layer = self.layer(age_s)
        if layer == "expired":
            reason = f"cache expired ({age_s:.0f}s old)"
            return _new(Freshness, (Verdict.EXPIRED, age_s, reason, rest, silent, "expired", None, True))
        if feed.live and not silent and layer == "fresh":
            return _new(Freshness, (Verdict.LIVE, age_s, feed.reason, rest, False, "fresh", PriceSource.LIVE, False))
        if price.silent is not None:
            reason = price.silent
        elif rest:
            reason = f"REST LTP poll ({feed.reason})"
        elif feed.live:
            reason = f"not confirmed by the feed for {age_s:.0f}s"
        else:
            reason = feed.reason
        if layer == "fresh":
            source = PriceSource.REST if rest else PriceSource.CACHED
            return _new(Freshness, (Verdict.CACHED_FRESH, age_s, reason, rest, silent, "fresh", source, silent))
        return _new(Freshness, (Verdict.CACHED_STALE, age_s, reason, rest, silent, "stale", PriceSource.STALE, True))


async def read_feed_liveness(redis: Redis, policy: FreshnessPolicy, clock: Clock) -> FeedLiveness:
    """The feed's liveness from `feed:status` and `heartbeat:feed` (one round trip). Raises RedisError; a corrupt
    status hash reads as not live."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.FEED_STATUS)
        pipe.get(keys.heartbeat("feed"))
        raw, beat = await pipe.execute()
    return feed_liveness_of(policy, raw, beat, clock.now())


def feed_liveness_of(policy: FreshnessPolicy, raw_status: dict[str, str], beat: str | None, now: float) -> FeedLiveness:
    """The feed's liveness from what `read_feed_liveness` reads (`HGETALL feed:status`, `GET heartbeat:feed`), for
    a caller that reads them in a round trip of its own. A corrupt status hash reads as not live."""
    try:
        status = FeedStatus.from_redis(raw_status)
    except MalformedRecord as exc:
        return FeedLiveness(False, f"corrupt feed status: {exc}")
    return policy.feed(status, heartbeat_age(beat, now))


def heartbeat_age(raw: str | None, now: float) -> float | None:
    """Seconds since a heartbeat value (epoch s text), None when absent or unreadable."""
    if raw is None:
        return None
    try:
        return max(0.0, now - float(raw))
    except ValueError:
        return None
