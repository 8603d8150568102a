from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from libs.common import keys
from libs.common.clock import ManualClock
from libs.common.positions import PositionStore
from libs.common.settings import Settings
from tests.monitor.conftest import compressed, long_bosch, set_feed, write_price

pytestmark = pytest.mark.integration


async def test_the_monitor_keeps_the_journal_at_journal_maxlen(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore, make_monitor: Any
) -> None:
    for i in range(4):
        await redis.lpush(keys.CLOSED_JOURNAL, f'{{"old": {i}}}')
    await set_feed(redis, settings, clock, live=True)
    await store.open(long_bosch())
    await write_price(redis, settings, "BOSCHLTD", "690.00", clock.now())  # crosses SL: one more close
    monitor = make_monitor(settings_=compressed(settings, journal_maxlen=2))
    await monitor.start()
    await monitor.sweep_once()
    await monitor.drain()
    await monitor.sweep_once()
    journal = await redis.lrange(keys.CLOSED_JOURNAL, 0, -1)
    assert len(journal) == 2 and '"symbol":"BOSCHLTD"' in journal[0].replace(" ", "")
    archived = [f["record"] for _, f in await redis.xrange(keys.CLOSED_ARCHIVE)]
    assert archived == ['{"old": 0}', '{"old": 1}', '{"old": 2}']
