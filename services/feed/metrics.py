"""The feed's Prometheus metrics.

Counters that change on the hot path are incremented where they happen (`RECONNECTS`, `TICKS`); what the
feed already keeps on its `StatusBoard` (connected, network errors, corrupt frames, absurd prices) is read from
it at scrape time, so the metrics and `connection-health` can never disagree.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.feed.status import StatusBoard

RECONNECTS = Counter("guard_feed_reconnects", "Reconnection attempts of the market-data WebSocket")
TICKS = Counter("guard_ticks", "Ticks received from the market-data feed")


class StatusCollector(Collector):
    """`guard_feed_connected`, `guard_feed_network_errors_total`, `guard_frames_dropped_total` and
    `guard_ticks_dropped_total` from the board."""

    def __init__(self, status: StatusBoard) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        status = self._status
        yield GaugeMetricFamily(
            "guard_feed_connected", "1 while the market-data WebSocket is live, else 0", value=int(status.connected)
        )
        yield CounterMetricFamily(
            "guard_feed_network_errors",
            "Network failures of the feed connection (drops, DNS, refused, dead or mute links)",
            value=status.network_errors,
        )
        dropped = CounterMetricFamily(
            "guard_frames_dropped", "Feed frames counted and dropped instead of decoded", labels=["reason"]
        )
        dropped.add_metric(["corrupt"], status.corrupt_frames)
        yield dropped
        refused = CounterMetricFamily(
            "guard_ticks_dropped", "Ticks counted and dropped instead of cached", labels=["reason"]
        )
        refused.add_metric(["absurd_price"], status.absurd_prices)
        refused.add_metric(["superseded"], status.superseded_ticks)
        yield refused
