"""Fixtures for the monitor's tests: compressed settings, captured log lines, positions, feed health, brokers."""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from libs.common import keys
from libs.common.broker import BrokerError, Fill, PaperBroker
from libs.common.clock import Clock, ManualClock
from libs.common.heartbeat import beat, beat_forever
from libs.common.logging import setup_logging
from libs.common.models import FeedState, FeedStatus, Position, Side
from libs.common.money import Paise
from libs.common.positions import PositionStore
from libs.common.price_cache import PriceCache, Tick, tick_notice
from libs.common.settings import Settings
from services.monitor import Monitor

BOSCH_KEY = "NSE_EQ|INE323A01026"
KAYNES_KEY = "NSE_EQ|INE918Z01012"
INSTRUMENT_KEYS = {"BOSCHLTD": BOSCH_KEY, "KAYNES": KAYNES_KEY, "RELIANCE": "NSE_EQ|INE002A01018"}
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \[(?P<tag>[A-Z]+)\] (?P<msg>.*) \| (?P<where>\S+)$")


class LogLines:
    """The monitor's log lines as the user sees them, `[TAG] message`."""

    def __init__(self, stream: io.StringIO) -> None:
        self._stream = stream

    def lines(self, *tags: str) -> list[str]:
        out = []
        for raw in self._stream.getvalue().splitlines():
            m = LINE.match(raw)
            if m and (not tags or m["tag"] in tags):
                out.append(f"[{m['tag']}] {m['msg']}")
        return out

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines())


@pytest.fixture
def logs(settings: Settings) -> LogLines:
    stream = io.StringIO()
    setup_logging("monitor", settings, stream=stream)
    return LogLines(stream)


def compressed(settings: Settings, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "monitor_sweep_interval_s": 0.05,
        "close_retry_base_s": 0.1,
        "close_retry_max_s": 0.4,
        "monitor_stuck_close_s": 0.5,
        "broker_timeout_s": 2.0,
        # Layer 0 fires inside the simulator the moment a price jumps through a GTT: these tests exercise layers 1-3
        # and the close path alone (test_safety_net_keeper.py and tests/e2e/test_safety_net.py cover Layer 0).
        "safety_net": "off",
        **overrides,
    }
    return settings.model_copy(update=values)


def long_bosch(**kw: Any) -> Position:
    fields: dict[str, Any] = {
        "symbol": "BOSCHLTD", "instrument_key": BOSCH_KEY, "side": Side.LONG, "quantity": 39,
        "entry_price": 73500, "stop_loss": 69825, "take_profit": 80000, "opened_at": 1.0, **kw,
    }  # fmt: skip
    return Position(**fields)


def long_kaynes(**kw: Any) -> Position:
    fields: dict[str, Any] = {
        "symbol": "KAYNES", "instrument_key": KAYNES_KEY, "side": Side.LONG, "quantity": 100,
        "entry_price": 19000, "stop_loss": 18000, "take_profit": 19776, "opened_at": 1.0, **kw,
    }  # fmt: skip
    return Position(**fields)


def short_reliance(**kw: Any) -> Position:
    fields: dict[str, Any] = {
        "symbol": "RELIANCE", "instrument_key": INSTRUMENT_KEYS["RELIANCE"], "side": Side.SHORT, "quantity": 10,
        "entry_price": 140000, "stop_loss": 145000, "take_profit": 135000, "opened_at": 1.0, **kw,
    }  # fmt: skip
    return Position(**fields)


async def set_feed(redis: Redis, settings: Settings, clock: Clock, *, live: bool) -> None:
    """What the feed would write: `feed:status` and (when live) a fresh heartbeat."""
    status = FeedStatus(state=FeedState.LIVE if live else FeedState.RECONNECTING, connected=live)
    await redis.hset(keys.FEED_STATUS, mapping=status.to_redis())
    if live:
        await beat(redis, "feed", settings, clock)
    else:
        await redis.delete(keys.heartbeat("feed"))


@contextlib.asynccontextmanager
async def feed_beating(redis: Redis, settings: Settings, clock: Clock) -> AsyncIterator[None]:
    """A live feed as its process shows it for the whole block: connected, and beating every
    HEARTBEAT_INTERVAL_S (one beat at the start goes silent after 3 s, which a loaded machine outlasts)."""
    await set_feed(redis, settings, clock, live=True)
    task = asyncio.create_task(beat_forever(redis, "feed", settings, clock))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def write_price(
    redis: Redis, settings: Settings, symbol: str, price: str, as_of: float, *, publish: bool = False
) -> str:
    """Write one frame as the feed does; returns the tick notice it published (or would have)."""
    tick = Tick(symbol, INSTRUMENT_KEYS[symbol], price)
    await PriceCache(redis, settings.price_cache_ttl_s).write_frame([tick], as_of, publish=publish)
    return tick_notice(as_of, [tick])


class ScriptedBroker(PaperBroker):
    """A paper broker that counts orders, fails the first `failures` of them, and can hang until released."""

    def __init__(self, failures: int = 0, hang: asyncio.Event | None = None, delay_s: float = 0.0) -> None:
        super().__init__()
        self.orders = 0
        self.failures = failures
        self.hang = hang
        self.delay_s = delay_s

    async def close(self, position: Position, tag: str, decision_price: Paise | None) -> Fill:
        self.orders += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.failures > 0:
            self.failures -= 1
            raise BrokerError("broker answered 503 (UDAPI100500: down)", status_code=503)
        if self.hang is not None:
            await self.hang.wait()
        return await super().close(position, tag, decision_price)


class LowestDraw(random.Random):
    """Every draw 0.0: backoffs wait their shortest (the close retry: 75 % of its ceiling)."""

    def random(self) -> float:
        return 0.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(redis: Redis, clock: ManualClock) -> PositionStore:
    return PositionStore(redis, clock)


@pytest.fixture
async def make_monitor(redis: Redis, settings: Settings, clock: ManualClock) -> AsyncIterator[Any]:
    """Build monitors on the test's Redis and clock; their closes are drained at the end."""
    made: list[Monitor] = []

    def build(broker: Any = None, *, settings_: Settings | None = None, clock_: Clock | None = None) -> Monitor:
        monitor = Monitor(
            settings_ or compressed(settings),
            redis,
            broker if broker is not None else ScriptedBroker(),
            clock_ or clock,
            rng=LowestDraw(),
        )
        made.append(monitor)
        return monitor

    yield build
    for monitor in made:
        await monitor.drain(timeout_s=5)
