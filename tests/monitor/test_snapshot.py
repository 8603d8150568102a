"""The sweep's reader: slices, digests and parse caches give the same snapshot as a plain read would."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from libs.common import keys
from libs.common.clock import ManualClock
from libs.common.freshness import PriceTruth
from libs.common.models import MalformedRecord, Position
from libs.common.positions import PositionStore
from libs.common.settings import Settings
from services.monitor.snapshot import SnapshotReader
from tests.monitor.conftest import long_bosch, long_kaynes, short_reliance, write_price

pytestmark = pytest.mark.integration


async def test_slices_cover_every_symbol_and_only_changed_hashes_are_parsed_again(
    redis: Redis, settings: Settings, clock: ManualClock, store: PositionStore
) -> None:
    for position in (long_bosch(), long_kaynes(), short_reliance()):
        await store.open(position)
    await write_price(redis, settings, "BOSCHLTD", "735.00", 1700000000.5)
    await redis.sadd(keys.OPEN_POSITIONS, "GHOST")  # listed open, no hash
    reader = SnapshotReader(redis, slice_size=2)

    parts = [part async for part in reader.read_slices()]
    assert [sorted(p.positions) for p in parts] == [["BOSCHLTD", "GHOST"], ["KAYNES", "RELIANCE"]]
    first = await reader.read()
    assert first.prices["BOSCHLTD"] == PriceTruth(ltp=73500, as_of=1700000000.5)
    assert first.prices["KAYNES"] is None
    assert isinstance(first.positions["GHOST"], MalformedRecord)
    assert first.positions["BOSCHLTD"] == long_bosch(rev=1, opened_rev=1)  # the first position script's revision
    assert first.rev == 3  # the revision counter when `positions:open` was read: three opens

    await store.update_levels("KAYNES", stop_loss=18500, take_profit=None)
    second = await reader.read()
    assert second.positions["BOSCHLTD"] is first.positions["BOSCHLTD"]  # unchanged: not parsed again
    kaynes = second.positions["KAYNES"]
    assert isinstance(kaynes, Position) and kaynes.stop_loss == 18500
    assert (kaynes.rev, kaynes.opened_rev, second.rev) == (4, 2, 4)  # the change took the next revision
    assert kaynes is not first.positions["KAYNES"]
