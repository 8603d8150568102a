"""A NIFTY option position beyond what one sliced order may carry (25 x the freeze quantity) closes to exactly
flat in one claim: a full sliced order, then the rest (real Redis, real simulator over REST)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from libs.common.broker import UpstoxBroker
from libs.common.broker_positions import BrokerPositions
from libs.common.clock import SystemClock
from libs.common.closing import Closer, CloseRequest
from libs.common.fno import is_expired
from libs.common.models import CloseReason, Position, PriceSource, Side
from libs.common.positions import PositionStore
from libs.common.settings import Settings
from services.sim.server import Simulator, running_simulator
from services.sim.settings import SimSettings
from tests.monitor.conftest import compressed
from tests.monitor.test_monitor_sim import sim_orders

pytestmark = pytest.mark.integration
CLOCK = SystemClock()


@pytest.fixture
async def sim(settings: Settings) -> AsyncIterator[Simulator]:
    async with running_simulator(SimSettings.of(settings, sim_order_rate_limit_per_s=0), auto_tick=False) as s:
        yield s


async def test_a_position_beyond_25_slices_closes_in_two_orders_to_flat(
    settings: Settings, redis: Redis, sim: Simulator
) -> None:
    now = time.time()
    option = next(i for i in sim.instruments if i.is_option and i.name == "NIFTY" and not is_expired(i, now))
    freeze, symbol = int(option.freeze_quantity), option.trading_symbol
    quantity = 26 * freeze
    for part in (25 * freeze, freeze):  # one app order may carry 25 slices at most
        assert sim.orders.trade(symbol, "buy", part).status == "complete"
    bsettings = compressed(
        settings,
        upstox_api_base=sim.rest_url,
        upstox_order_base=sim.rest_url,
        broker="upstox",
        monitor_stuck_close_s=10,
    )
    broker = UpstoxBroker(bsettings)
    store = PositionStore(redis, CLOCK)
    await store.open(
        Position(symbol=symbol, instrument_key=option.instrument_key, side=Side.LONG, quantity=quantity,
                 entry_price=10000, stop_loss=5000, opened_at=CLOCK.now())
    )  # fmt: skip
    holdings = BrokerPositions(redis, broker, CLOCK, max_age_s=0)
    request = CloseRequest(symbol, CloseReason.STOP_LOSS, "monitor", 5000, PriceSource.LIVE, 0.0)
    record = await Closer(store, broker, CLOCK, holdings=holdings, settings=bsettings).close(request)
    await broker.aclose()
    assert record.quantity == quantity
    orders = await sim_orders(sim)
    assert len(orders) == 26 and all(o["quantity"] == freeze and o["status"] == "complete" for o in orders)
    assert len({o["tag"] for o in orders}) == 1
    assert sim.orders.positions.net(option.instrument_key, "I") == 0
