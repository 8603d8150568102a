"""Expiry day, on the simulator and one clock for all: an option expiring today is listed by `/status` and
connection health, warned about `FNO_EXPIRY_WARN_MIN` before 15:30 IST (once), and reported loudly once it has
stopped trading while still open; the simulator stops ticking it and refuses orders for it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import httpx
import pytest
from redis.asyncio import Redis

from libs.common.broker import UpstoxBroker
from libs.common.clock import IST, ManualClock, SystemClock
from libs.common.models import Position, PositionState, Side
from libs.common.positions import PositionStore
from libs.common.settings import Settings
from services.api.app import create_app
from services.monitor import Monitor
from services.sim.server import Simulator, running_simulator
from tests.monitor.conftest import LogLines, compressed

pytestmark = pytest.mark.integration

# Tuesday 8 Dec 2026, 14:50 IST: the NIFTY weekly of that day still trades for 40 minutes.
EXPIRY_DAY = datetime(2026, 12, 8, 14, 50, tzinfo=IST).timestamp()
SYMBOL = "NIFTY 24000 CE 08 DEC 26"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(EXPIRY_DAY)


@pytest.fixture
async def sim(settings: Settings, clock: ManualClock) -> AsyncIterator[Simulator]:
    async with running_simulator(settings, clock=clock, auto_tick=False) as running:
        yield running


async def test_an_option_expiring_today_is_listed_warned_and_reported_at_expiry(
    settings: Settings, redis: Redis, sim: Simulator, clock: ManualClock, logs: LogLines
) -> None:
    msettings = compressed(
        settings, upstox_api_base=sim.rest_url, upstox_order_base=sim.rest_url, broker="upstox", fno_expiry_warn_min=30
    )
    lot = sim.instruments[sim.market.by_symbol[SYMBOL]].lot_size
    assert sim.orders.trade(SYMBOL, "buy", 2 * lot).status == "complete"
    store = PositionStore(redis, clock)
    key = sim.instruments[sim.market.by_symbol[SYMBOL]].instrument_key
    await store.open(
        Position(symbol=SYMBOL, instrument_key=key, side=Side.LONG, quantity=2 * lot, entry_price=15000,
                 stop_loss=5000, opened_at=clock.now())
    )  # fmt: skip
    broker = UpstoxBroker(msettings, clock=clock)
    monitor = Monitor(msettings, redis, broker, clock)
    api_clock = _ReadsOf(clock)  # the api's heartbeat sleeps for real; the date is the manual clock's
    probe_http = httpx.AsyncClient(transport=_profile_ok())
    app = create_app(msettings, broker=broker, clock=api_clock, http=probe_http)
    async with (
        probe_http,
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as api,
        httpx.AsyncClient() as http,
    ):
        status = (await api.get("/api/v1/monitoring/status")).json()
        assert [(e["symbol"], e["minutes_left"], e["expired"]) for e in status["expiring_today"]] == [
            (SYMBOL, 40.0, False)
        ]
        assert status["expiring_today"][0]["trading_ends"] == "2026-12-08T15:30:00+05:30"
        health = (await api.get("/api/v1/monitoring/connection-health")).json()
        assert [e["symbol"] for e in health["expiring_today"]] == [SYMBOL]

        await monitor.sweep_once()  # 40 minutes left: not yet
        assert logs.count("expires today") == 0
        clock.advance(11 * 60)
        await monitor.sweep_once()
        await monitor.sweep_once()
        warnings = [line for line in logs.lines("WARNING") if "expires today" in line]
        assert warnings == [
            f"[WARNING] {SYMBOL} expires today: trading ends at 15:30 IST in 29 min and the position is still open "
            f"({2 * lot} long)"
        ]

        clock.advance(30 * 60)  # 15:31: the contract no longer trades
        before = sim.market.quotes[sim.market.by_symbol[SYMBOL]].ltp
        sim.market.set_price("NIFTY", 2300000)
        assert sim.market.quotes[sim.market.by_symbol[SYMBOL]].ltp == before  # no more ticks
        refused = await http.post(
            sim.rest_url + "/v3/order/place", headers={"Authorization": f"Bearer {sim.token}"},
            json={"quantity": lot, "product": "I", "validity": "DAY", "price": 0, "instrument_token": key,
                  "order_type": "MARKET", "transaction_type": "SELL", "disclosed_quantity": 0, "trigger_price": 0,
                  "is_amo": False},
        )  # fmt: skip
        assert refused.status_code == 400 and "expired" in refused.text
        await monitor.sweep_once()
        await monitor.sweep_once()
        errors = [line for line in logs.lines("ERROR") if "expired at 15:30" in line]
        assert len(errors) == 1 and SYMBOL in errors[0] and f"({2 * lot} long)" in errors[0]
        position = await store.get(SYMBOL)
        assert position is not None and position.state is PositionState.OPEN  # never dropped silently
        kinds = [e["kind"] for e in await store.recent_events(20) if e.get("symbol") == SYMBOL]
        assert kinds.count("expiry_warning") == 1 and kinds.count("expired_open") == 1
        status = (await api.get("/api/v1/monitoring/status")).json()
        assert [(e["symbol"], e["expired"]) for e in status["expiring_today"]] == [(SYMBOL, True)]
    await broker.aclose()


class _ReadsOf(SystemClock):
    def __init__(self, clock: ManualClock) -> None:
        self._clock = clock

    def now(self) -> float:
        return self._clock.now()


def _profile_ok() -> httpx.MockTransport:
    return httpx.MockTransport(lambda _: httpx.Response(200, json={"status": "success", "data": {"user_name": "Sim"}}))
