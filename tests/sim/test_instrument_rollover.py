"""A new trading day on the simulator's clock: the simulator lists (and starts trading) that day's contracts in
the instrument file it serves, and a guard reading that file through INSTRUMENTS_URL knows them once it is 06:30
IST, without a restart (real HTTP on loopback; the clock is the simulator's own `ManualClock`). Then the services,
real processes, read their instruments from the simulator's file."""

from __future__ import annotations

import asyncio
import gzip
import json
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from libs.common.clock import IST, ManualClock
from libs.common.instruments import guard_instruments, load_instruments
from libs.common.settings import Settings
from services.sim.server import running_simulator
from tests.e2e.harness import Stack
from tests.helpers import eventually
from tests.sim.conftest import sim_settings

TUESDAY = datetime(2026, 12, 8, 14, 0, tzinfo=IST).timestamp()  # a NIFTY weekly expires today at 15:30
TODAYS = "NIFTY 24000 CE 08 DEC 26"
NEW = "NIFTY 24000 CE 22 DEC 26"  # listed from Wednesday 9 Dec


@pytest.mark.integration
async def test_a_long_running_guard_lists_the_new_days_contracts_from_the_simulators_file() -> None:
    clock = ManualClock(TUESDAY)
    base = Settings(_env_file=None)  # type: ignore[call-arg]
    async with running_simulator(sim_settings(base), clock=clock, auto_tick=False) as sim:
        url = f"{sim.rest_url}/market-quote/instruments/exchange/complete.json.gz"
        guard = base.model_copy(update={"instruments_url": url})
        # Read in a thread, as a guard process reads it at start (the simulator answers from this event loop).
        index = await asyncio.to_thread(guard_instruments, guard, clock)
        todays = index.by_symbol(TODAYS)
        assert todays is not None and (todays.lot_size, todays.freeze_quantity) == (75, 1800.0)
        assert index.by_symbol(NEW) is None
        assert sim.market.index.get(todays.instrument_key) is not None

        clock.advance(17 * 3600)  # Wednesday 07:00 IST
        assert index.by_symbol(NEW) is None  # the first lookup of the day asks again, in the background
        new = await eventually(lambda: index.by_symbol(NEW), timeout_s=10)
        assert (new.lot_size, new.freeze_quantity, new.underlying_key) == (75, 1800.0, "NSE_INDEX|Nifty 50")
        assert index.by_symbol(TODAYS) is not None  # expired yesterday, still known for a position left open

        async with httpx.AsyncClient(timeout=5) as http:
            rows = json.loads(gzip.decompress((await http.get(url)).content))
        symbols = {r["trading_symbol"] for r in rows}
        assert NEW in symbols and TODAYS not in symbols  # the file lists today's contracts only
        order = sim.orders.trade(NEW, "buy", 75)  # the simulator trades what it lists
        assert order.status == "complete"
        assert sim.market.ltp_paise(new.instrument_key) is not None


@pytest.mark.e2e
async def test_the_services_read_their_instruments_from_the_simulators_file(tmp_path: Path) -> None:
    """INSTRUMENTS_URL across real processes: the api knows the option's lot from the file it read."""
    async with Stack(tmp_path) as stack:
        stack.env["INSTRUMENTS_URL"] = f"{stack.sim_url}/market-quote/instruments/exchange/complete.json.gz"
        await stack.start("sim", "api")
        option = next(i for i in load_instruments() if i.name == "NIFTY" and i.is_option and i.weekly)
        body = {"symbol": option.trading_symbol, "side": "long", "quantity": 10, "entry_price": 150.0}
        refused = await stack.api("POST", "/api/v1/positions", json=body)
        assert refused.status_code == 422, refused.text
        assert f"the lot size is {option.lot_size}" in refused.json()["detail"][0]["msg"]
        assert f"instruments from http://127.0.0.1:{stack.sim_port}/market-quote/" in stack.log("api")
