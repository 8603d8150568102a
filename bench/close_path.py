"""Decision -> close order on the wire: the monitor's whole close path against the simulator's broker.

Setup: the simulator (its broker holds each position: `POST /sim/trade` buys it first, as the bot would), the
monitor with the product's close path (Upstox broker = the simulator, the safety net on, so a close checks the
broker's position and cancels the position's GTT before it sells), and `bench.load` playing a live feed.
N long positions on the simulator's equities; each is triggered once, one after the other: a price below its
stop-loss written the way the feed writes it. The monitor's `closing` event carries `decided_at` (its `[SL]`
moment); the simulator records when the sell order reached it (`placed_at` in `GET /sim/orders`). The figure is
`placed_at - decided_at`, one clock on one machine.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from bench.env import Services, percentiles
from libs.common import keys
from libs.common.clock import SystemClock
from libs.common.instruments import Instrument, load_instruments
from libs.common.models import Position, Side
from libs.common.positions import PositionStore
from libs.common.price_cache import PriceCache, Tick
from libs.common.redis_client import create_redis
from libs.common.settings import Settings

SPACING_S = 0.3


def equities(count: int) -> list[Instrument]:
    shipped = [i for i in load_instruments(0) if i.segment == "NSE_EQ" and i.lot_size == 1]
    return shipped[:count]


def _position(inst: Instrument) -> Position:
    close = inst.close_price_paise
    return Position(
        symbol=inst.trading_symbol,
        instrument_key=inst.instrument_key,
        side=Side.LONG,
        quantity=1,
        entry_price=close,
        # A stop whose GTT trigger (0.5 % under it) is inside the day's band, so the broker accepts the GTT.
        stop_loss=max(close * 97 // 100, inst.band_paise[0] * 101 // 100),
        take_profit=close * 110 // 100,
        opened_at=time.time(),
    )


async def _measure(settings: Settings, sim_url: str, instruments: list[Instrument]) -> dict[str, Any]:
    redis: Redis = create_redis(settings)
    listener: Redis = create_redis(settings)
    cache = PriceCache(redis, settings.price_cache_ttl_s)
    decided: dict[str, float] = {}
    waiting: dict[str, asyncio.Future[float]] = {}
    pubsub = listener.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(keys.POSITION_EVENTS_CHANNEL)

    async def listen() -> None:
        async for message in pubsub.listen():
            event = json.loads(message["data"])
            symbol = event.get("symbol")
            if event.get("kind") == "closing" and symbol in waiting and not waiting[symbol].done():
                waiting[symbol].set_result(float(event["decided_at"]))

    reader = asyncio.create_task(listen())
    missed = 0
    try:
        for inst in instruments:
            symbol = inst.trading_symbol
            waiting[symbol] = asyncio.get_running_loop().create_future()
            price = f"{inst.close_price_paise * 95 // 100 / 100:.2f}"
            await cache.write_frame([Tick(symbol, inst.instrument_key, price)], time.time())
            try:
                decided[symbol] = await asyncio.wait_for(waiting[symbol], 5)
            except TimeoutError:
                missed += 1
            # One close at a time, spaced so the client-side pacing under Upstox's order limit (10/s: a GTT cancel and
            # a sell per close) never queues one: the path is measured, not a queue.
            await asyncio.sleep(SPACING_S)
        placed: dict[str, float] = {}
        deadline = time.monotonic() + 10
        async with httpx.AsyncClient(timeout=10) as http:
            while time.monotonic() < deadline and len(placed) < len(decided):
                orders = (await http.get(sim_url + "/sim/orders")).json()
                placed = {
                    o["trading_symbol"]: float(o["placed_at"])
                    for o in orders
                    if o["transaction_type"] == "SELL" and o["trading_symbol"] in decided
                }
                await asyncio.sleep(0.2)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await listener.aclose()
        await redis.aclose()
    samples = [(placed[s] - decided[s]) * 1000 for s in decided if s in placed]
    return {
        "positions": len(instruments),
        "closes_timed": len(samples),
        "missed": missed + len(decided) - len(samples),
        **percentiles(samples, 50, 95, 99),
        "max": round(max(samples, default=0), 3),
    }


def _wait_safety_nets(sim_url: str, count: int, timeout_s: float = 45) -> int:
    """Until the simulator holds a live GTT for every position (placed within the keeper's half of the order
    pacing, ~4/s), or `timeout_s` (a GTT the simulator refuses is retried by the monitor; its position closes
    without a cancel)."""
    deadline = time.monotonic() + timeout_s
    live = 0
    with httpx.Client(timeout=10) as http:
        while time.monotonic() < deadline and live < count:
            time.sleep(0.5)
            live = sum(1 for g in http.get(sim_url + "/sim/gtt").json() if g["live"])
    time.sleep(1.0)
    return live


def run(services: Services, redis_url: str, *, positions: int) -> dict[str, Any]:
    """p50/p95/p99 ms from the monitor's decision to its sell order at the simulator, `positions` closes."""
    settings = Settings(_env_file=None, redis_url=redis_url)  # type: ignore[call-arg]
    instruments = equities(positions)
    env = services.base_env(SIM_TICK_INTERVAL_S="3600", MONITOR_SWEEP_INTERVAL_S="1", HEARTBEAT_TTL_S="30")
    sim_url = f"http://127.0.0.1:{env['SIM_PORT']}"

    async def setup() -> None:
        redis = create_redis(settings)
        await redis.flushall()
        store = PositionStore(redis, SystemClock())
        cache = PriceCache(redis, settings.price_cache_ttl_s)
        async with httpx.AsyncClient(timeout=10) as http:
            for inst in instruments:
                trade = {"symbol": inst.trading_symbol, "side": "buy", "quantity": 1}
                (await http.post(sim_url + "/sim/trade", json=trade)).raise_for_status()
                await store.open(_position(inst))
        price = [Tick(i.trading_symbol, i.instrument_key, f"{i.close_price_paise / 100:.2f}") for i in instruments]
        await cache.write_frame(price, time.time())
        await redis.aclose()

    with tempfile.NamedTemporaryFile("w", suffix=".symbols", delete=False) as f:
        f.write("\n".join(f"BG{i:04d}" for i in range(500)))
        background = f.name
    try:
        services.start("sim", env)
        services.wait_check("sim", env)
        asyncio.run(setup())
        services.start("load", env, module="bench.load", args=(redis_url, "1000", "120", "@" + background))
        services.start("monitor", env)
        services.wait_check("monitor", env)
        nets = _wait_safety_nets(sim_url, len(instruments))
        return {**asyncio.run(_measure(settings, sim_url, instruments)), "safety_nets": nets}
    finally:
        services.stop("monitor")
        services.stop("load")
        services.stop("sim")
        Path(background).unlink()
