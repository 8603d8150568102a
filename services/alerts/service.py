"""The alerts service's loops: heartbeat, events -> outbox, derived conditions, delivery, healthcheck pings."""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable

import httpx
from loguru import logger
from redis.asyncio import Redis

from libs.common.clock import Clock
from libs.common.notify import Target
from libs.common.service import supervise
from libs.common.settings import Settings
from services.alerts.checks import Checks, Liveness
from services.alerts.delivery import Delivery
from services.alerts.healthcheck import HealthcheckPinger
from services.alerts.intake import Intake


async def run_alerts(settings: Settings, redis: Redis, clock: Clock, targets: list[Target]) -> None:
    """Run every loop until cancelled, under `supervise` (a loop that fails on Redis is restarted with backoff)."""
    consumer = f"{socket.gethostname()}-{os.getpid()}"
    liveness = Liveness(redis, settings, clock)
    where = ", ".join(t.label for t in targets) or "the log only (ALERT_URLS is empty)"
    logger.info(f"Alerts go to {where}; consumer {consumer}")
    async with httpx.AsyncClient(timeout=10) as http:
        # Each (re)start builds its loop afresh: nothing a failed run held in memory carries over.
        loops: dict[str, Callable[[], Awaitable[None]]] = {
            "intake": lambda: Intake(redis, settings, clock, consumer).run(),
            "checks": lambda: Checks(redis, settings, clock, liveness).run(),
            "delivery": lambda: Delivery(redis, settings, clock, consumer, targets).run(),
        }
        if settings.healthcheck_ping_url.get_secret_value():
            loops["healthcheck"] = lambda: HealthcheckPinger(settings, clock, liveness, http).run()
        await supervise("alerts", loops, redis=redis, settings=settings, clock=clock)
