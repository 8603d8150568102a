"""The alerts service's Prometheus metrics (served on `ALERTS_METRICS_PORT`, 9103)."""

from __future__ import annotations

from prometheus_client import Counter

SENDS = Counter("guard_alert_sends", "Alert messages handed to a target, by result (sent, failed: retried)", ["result"])
for _result in ("sent", "failed"):
    SENDS.labels(result=_result)  # both series exist from the start, so increase() sees the first failure
