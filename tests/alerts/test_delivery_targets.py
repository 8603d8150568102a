"""The delivery loop in-process against a real Redis and real HTTP receivers: per-target retries in order, an ack
only when every target has the message, the log alone when there is no target."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from loguru import logger
from pydantic import SecretStr
from redis.asyncio import Redis

from libs.common import keys
from libs.common.clock import SystemClock
from libs.common.notify import targets
from libs.common.settings import Settings
from services.alerts.delivery import Delivery
from services.alerts.outbox import Outbox
from services.alerts.table import render
from tests.alerts.receiver import Receiver
from tests.helpers import eventually

pytestmark = pytest.mark.integration


@asynccontextmanager
async def delivering(redis: Redis, settings: Settings, urls: list[str]) -> AsyncIterator[None]:
    fast = settings.model_copy(update={"alert_retry_base_s": 0.1, "alert_retry_max_s": 0.3})
    delivery = Delivery(redis, fast, SystemClock(), "test-consumer", targets([SecretStr(u) for u in urls]))
    task = asyncio.create_task(delivery.run())
    try:
        await eventually(lambda: redis.exists(keys.ALERTS_OUTBOX))  # its group is created
        yield
    finally:
        while not task.done():  # a cancel landing as a Redis reply arrives can be swallowed (Python 3.11)
            task.cancel()
            await asyncio.wait({task}, timeout=0.2)


async def queue(redis: Redis, symbol: str) -> None:
    await Outbox(redis).post(render("monitored_again", {"symbol": symbol, "price_source": "live"}, 0.0))


async def pending(redis: Redis) -> int:
    summary: Any = await redis.xpending(keys.ALERTS_OUTBOX, keys.ALERTS_GROUP)
    return int(summary["pending"])


async def test_a_failing_target_is_retried_in_order_without_resending_to_the_working_one(
    redis: Redis, settings: Settings
) -> None:
    with Receiver() as good, Receiver() as bad:
        bad.status = 500
        async with delivering(redis, settings, [good.url, bad.url]):
            await queue(redis, "AAA")
            await queue(redis, "BBB")
            await eventually(lambda: len(good.delivered()) == 2)
            await eventually(lambda: len(bad.requests) >= 3)  # retried, always the oldest first
            assert {r.title for r in bad.requests} == {"[RECOVERED] Monitoring AAA again"}
            assert await pending(redis) == 2  # not acknowledged while a target lacks them
            bad.status = 200
            await eventually(lambda: len(bad.delivered()) == 2)
            await eventually(lambda: _none_pending(redis))
        titles = ["[RECOVERED] Monitoring AAA again", "[RECOVERED] Monitoring BBB again"]
        assert good.titles() == titles and bad.titles() == titles
        assert await redis.keys(keys.ALERT_SENT_PREFIX + "*") == []


async def test_without_targets_an_alert_goes_to_the_log_and_is_acknowledged(redis: Redis, settings: Settings) -> None:
    out = io.StringIO()
    logger.add(out, format="[{extra[tag]}] {message}", filter=lambda r: "tag" in r["extra"])
    async with delivering(redis, settings, []):
        await queue(redis, "AAA")
        await eventually(lambda: _none_pending(redis))
    assert "[ALERT] [RECOVERED] Monitoring AAA again: A live price of AAA is available again" in out.getvalue()


async def _none_pending(redis: Redis) -> bool:
    """Every queued message was read by the group and acknowledged (one not read yet is not pending either)."""
    if await redis.xlen(keys.ALERTS_OUTBOX) == 0 or await pending(redis) != 0:
        return False
    info: Any = await redis.xinfo_stream(keys.ALERTS_OUTBOX)
    groups: Any = await redis.xinfo_groups(keys.ALERTS_OUTBOX)
    return bool(groups) and all(g["last-delivered-id"] == info["last-generated-id"] for g in groups)
