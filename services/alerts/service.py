"""The alerts service's tasks: heartbeat, events -> outbox, derived conditions, delivery, healthcheck pings."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
from loguru import logger
from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.common.clock import Clock
from libs.common.heartbeat import beat_forever
from libs.common.notify import Target
from libs.common.settings import Settings
from services.alerts.checks import Checks, Liveness
from services.alerts.delivery import Delivery
from services.alerts.healthcheck import HealthcheckPinger
from services.alerts.intake import Intake


async def run_alerts(settings: Settings, redis: Redis, clock: Clock, targets: list[Target]) -> None:
    """Run every task until cancelled; a task that fails on Redis is restarted after a pause."""
    consumer = f"{socket.gethostname()}-{os.getpid()}"
    liveness = Liveness(redis, settings, clock)
    where = ", ".join(t.label for t in targets) or "the log only (ALERT_URLS is empty)"
    logger.info(f"Alerts go to {where}; consumer {consumer}")
    async with httpx.AsyncClient(timeout=10) as http:
        loops: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
            "heartbeat": lambda: beat_forever(redis, "alerts", settings, clock),
            "intake": lambda: Intake(redis, settings, clock, consumer).run(),
            "checks": lambda: Checks(redis, settings, clock, liveness).run(),
            "delivery": lambda: Delivery(redis, settings, clock, consumer, targets).run(),
        }
        if settings.healthcheck_ping_url.get_secret_value():
            loops["healthcheck"] = lambda: HealthcheckPinger(settings, clock, liveness, http).run()
        async with asyncio.TaskGroup() as group:
            for name, make in loops.items():
                group.create_task(_supervised(name, make, clock), name=f"alerts-{name}")


async def _supervised(name: str, make: Callable[[], Coroutine[Any, Any, None]], clock: Clock) -> None:
    """Run the loop `make()` forever: on a Redis outage (or a bug) log it and start it again after 1 s."""
    while True:
        try:
            await make()
        except RedisError as exc:
            logger.warning(f"Alerts {name} loop: Redis {type(exc).__name__}: {exc}; restarting it in 1 s")
        except Exception:
            logger.exception(f"Alerts {name} loop failed; restarting it in 1 s")
        await clock.sleep(1.0)
