"""Prometheus metrics shared by the services, and the exporter that serves them.

Each process exports its own numbers: the feed on `FEED_METRICS_PORT` (9101), the monitor on
`MONITOR_METRICS_PORT` (9102), both bound to `METRICS_HOST` (loopback by default), and the api on its own
`GET /metrics`. Names follow Prometheus conventions: the unit in the name, `_total` on counters (the client
library appends it), low-cardinality labels. The names every closer or Redis client shares live here; the
feed's and the monitor's own live beside them (`services/feed/metrics.py`, `services/monitor/metrics.py`).

Metrics never stand in the way of protection: an exporter that cannot bind is logged and skipped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import prometheus_client
from loguru import logger
from prometheus_client import Counter, Histogram
from redis.asyncio.retry import Retry

T = TypeVar("T")

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # `_created` series only add noise to dashboards

# Latency buckets (s) from a millisecond tick path up to a broker call that hits its timeout.
_FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_CLOSE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

CLOSES = Counter(
    "guard_closes",
    "Positions closed, by why, by whom and on which price",
    ["reason", "closed_by", "price_source"],
)
CLOSE_FAILURES = Counter(
    "guard_close_failures",
    "Closes that did not fill: kind 'rejected' (the position stays open) or 'unknown' (settled by the order tag)",
    ["kind"],
)
CLOSE_SECONDS = Histogram(
    "guard_close_seconds", "From the close decision to the broker's fill, seconds", buckets=_CLOSE_BUCKETS
)
TICK_TO_DECISION = Histogram(
    "guard_tick_to_decision_seconds",
    "From the feed receiving a frame to the monitor's SL/TP decisions on it (frames with open positions), seconds",
    buckets=_FAST_BUCKETS,
)
# Series that exist at 0 from the start, so `increase()` sees the first failure.
for _kind in ("rejected", "unknown"):
    CLOSE_FAILURES.labels(kind=_kind)
REDIS_ERRORS = Counter("guard_redis_errors", "Redis connection errors and timeouts (each failed attempt)", ["service"])

_service = "unknown"


def set_service(name: str) -> None:
    """Name this process for the `service` label (`run_service` calls it)."""
    global _service  # one name per process, set once at start
    _service = name
    REDIS_ERRORS.labels(service=name)


def start_exporter(port: int, host: str) -> bool:
    """Serve this process's metrics on `host:port` from a background thread. Port 0 means off.

    Returns False (after one `[WARNING]` line) when the port cannot be bound: the service runs on without it.
    """
    if port == 0:
        return False
    try:
        prometheus_client.start_http_server(port, addr=host)
    except OSError as exc:
        logger.warning(f"Metrics not exported: cannot listen on {host}:{port} ({exc.strerror or exc})")
        return False
    logger.info(f"Metrics at http://{host}:{port}/metrics")
    return True


def observe_close(reason: str, closed_by: str, price_source: str, decided_at: float | None, filled_at: float) -> None:
    """Count one completed close and, when its decision time is known, its decision-to-fill time."""
    CLOSES.labels(reason=reason, closed_by=closed_by, price_source=price_source).inc()
    if decided_at is not None:
        CLOSE_SECONDS.observe(max(0.0, filled_at - decided_at))


class CountingRetry(Retry):
    """redis-py's retry that also counts every connection error and timeout in `guard_redis_errors_total`."""

    async def call_with_retry(self, do: Callable[[], Awaitable[T]], fail: Any, *args: Any, **kwargs: Any) -> T:
        async def counted() -> T:
            try:
                return await do()
            except self._supported_errors:
                REDIS_ERRORS.labels(service=_service).inc()
                raise

        return await super().call_with_retry(counted, fail, *args, **kwargs)
