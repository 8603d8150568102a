"""`python -m services.alerts`: settings -> Redis and the alert targets -> the alerts tasks, until SIGTERM/SIGINT."""

from __future__ import annotations

import sys

from libs.common.clock import SystemClock
from libs.common.metrics import start_exporter
from libs.common.notify import InvalidTarget, targets
from libs.common.redis_client import create_redis
from libs.common.service import run_service
from libs.common.settings import ConfigError, Settings
from services.alerts.service import run_alerts


async def main(settings: Settings) -> None:
    try:
        chosen = targets(settings.alert_urls)
    except InvalidTarget as exc:
        raise ConfigError(f"config error: {exc}") from None
    redis = create_redis(settings)
    start_exporter(settings.alerts_metrics_port, settings.metrics_host)
    try:
        await run_alerts(settings, redis, SystemClock(), chosen)
    finally:
        await redis.aclose()


if __name__ == "__main__":
    sys.exit(
        run_service(
            "alerts",
            main,
            description="Sends the guard's alerts (feed down, stale prices, cannot monitor, closes, ...) "
            "through apprise to ALERT_URLS, each once, with what to do.",
        )
    )
