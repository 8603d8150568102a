"""`python -m services.monitor`: settings -> Redis and broker clients -> the monitor, until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import sys

from loguru import logger
from prometheus_client import REGISTRY

from libs.common.broker import create_broker
from libs.common.clock import SystemClock
from libs.common.credentials import Credentials
from libs.common.metrics import start_exporter
from libs.common.redis_client import create_redis
from libs.common.service import run_service
from libs.common.settings import Settings
from services.monitor.metrics import PositionsCollector
from services.monitor.monitor import Monitor


async def main(settings: Settings) -> None:
    redis = create_redis(settings)
    broker = create_broker(settings, Credentials(settings, redis))
    where = "simulator" if settings.simulator_mode else "Upstox"
    target = "no orders leave the process" if settings.broker == "paper" else f"orders go to {where}"
    logger.info(f"Closing through the {settings.broker} broker ({target})")
    try:
        clock = SystemClock()
        monitor = Monitor(settings, redis, broker, clock)
        REGISTRY.register(PositionsCollector(redis, settings, clock, asyncio.get_running_loop()))
        start_exporter(settings.monitor_metrics_port, settings.metrics_host)
        await monitor.run()
    finally:
        await broker.aclose()
        await redis.aclose()


if __name__ == "__main__":
    sys.exit(
        run_service(
            "monitor",
            main,
            description="Checks stop-loss / take-profit of every open position on live or cached prices.",
        )
    )
