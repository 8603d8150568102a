"""Fixtures for the feed's tests: captured log lines, a feed running in-process, compressed settings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from loguru import logger
from redis.asyncio import Redis

from libs.common.service import cancel_and_wait
from libs.common.settings import Settings
from services.feed.service import Feed


class Logs:
    """Every log line as the guide shows it: ``[TAG] message`` (plus the module, for `grep websocket`)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.modules: list[str] = []
        self.times: list[float] = []

    def write(self, message: Any) -> None:
        record = message.record
        tag = record["extra"].get("tag") or record["level"].name
        self.lines.append(f"[{tag}] {record['message']}")
        self.modules.append(record["name"] or "")
        self.times.append(record["time"].timestamp())

    def having(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]

    def count(self, line: str) -> int:
        return sum(1 for x in self.lines if x == line)

    def index(self, line: str, start: int = 0) -> int:
        """Position of the first line equal to `line` (or starting with it, when it ends with "*")."""
        for i in range(start, len(self.lines)):
            if self.lines[i] == line or (line.endswith("*") and self.lines[i].startswith(line[:-1])):
                return i
        raise AssertionError(f"{line!r} not logged after line {start}; got {self.lines[start:][-40:]}")

    def after(self, start: int) -> list[str]:
        return self.lines[start:]

    def feed_after(self, start: int) -> list[str]:
        """Lines after `start` of the feed and its libraries (not the in-process simulator's)."""
        pairs = zip(self.lines[start:], self.modules[start:], strict=True)
        return [line for line, module in pairs if not module.startswith("services.sim")]


@pytest.fixture
def logs() -> Iterator[Logs]:
    capture = Logs()
    sink_id = logger.add(capture.write, level="INFO", format="{message}")
    yield capture
    logger.remove(sink_id)


FAST: dict[str, Any] = {
    "reconnect_base_delay_s": 0.2,
    "reconnect_max_delay_s": 0.5,
    "auth_retry_delay_s": 1.0,
    "feed_silence_timeout_s": 1.0,
    "vouch_interval_s": 0.2,
    "ws_ping_interval_s": 0.5,
    "ws_ping_timeout_s": 0.5,
    "ws_open_timeout_s": 2.0,
    "dns_timeout_s": 1.0,
    "heartbeat_interval_s": 0.2,
    "sim_tick_interval_s": 0.05,
    "sim_ws_ping_interval_s": 0.2,
    "sim_order_rate_limit_per_s": 0,
    "feed_subscriptions_refresh_s": 0.5,
}


def fast(settings: Settings, **overrides: Any) -> Settings:
    """The test settings with the feed's and the simulator's times compressed."""
    return settings.model_copy(update={**FAST, **overrides})


@asynccontextmanager
async def running_feed(settings: Settings, redis: Redis, **kwargs: Any) -> AsyncIterator[Feed]:
    """A `Feed` running in this event loop; cancelled (and checked for a clean stop) on exit."""
    feed = Feed(settings, redis, **kwargs)
    task = asyncio.create_task(feed.run(), name="test-feed")
    try:
        yield feed
    finally:
        await cancel_and_wait([task], grace_s=8.0)
        results = await asyncio.gather(task, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError), results
