"""Tick -> decision: a price crossing a stop-loss is written to Redis the way the feed writes it, and the
monitor process decides (logs `[SL]`), claims the position and publishes its `closing` event.

Setup: N open long positions (entry 1000.00, SL 900.00, TP 1100.00) opened through `PositionStore`, the
paper broker, and `bench.load` writing 10,000 ticks/s of neutral prices over the positions and thousands
of other symbols (it also plays a live feed status and heartbeat). A fixed group of 100 positions takes the
triggers in turn: one `PriceCache.write_frame` at 850.00 (time stamped just before the call). The `closing`
event carries `decided_at` (stamped by the monitor when it decided, the moment of its `[SL]` line): that is
the tick -> decision latency. Its `at` (stamped after the atomic claim in Redis) gives tick -> claim too.
Each closed position is reopened, so the open count stays at N.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench import profile
from bench.env import CpuMeter, Knobs, Services, percentiles, private_redis, rss_mb
from libs.common import keys
from libs.common.clock import SystemClock
from libs.common.models import Position, Side
from libs.common.positions import PositionStore
from libs.common.price_cache import PriceCache, Tick
from libs.common.redis_client import create_redis
from libs.common.settings import Settings

TRIGGER_GROUP = 100
BACKGROUND_SYMBOLS = 5000


def _position(symbol: str) -> Position:
    return Position(
        symbol=symbol,
        instrument_key="NSE_EQ|" + symbol,
        side=Side.LONG,
        quantity=1,
        entry_price=100_000,
        stop_loss=90_000,
        take_profit=110_000,
        opened_at=time.time(),
    )


async def _open_all(store: PositionStore, symbols: list[str]) -> None:
    for i in range(0, len(symbols), 16):
        await asyncio.gather(*(store.open(_position(s)) for s in symbols[i : i + 16]))


async def _measure(settings: Settings, trigger_symbols: list[str], triggers: int, timeout_s: float) -> dict[str, Any]:
    redis: Redis = create_redis(settings)
    listener: Redis = create_redis(settings)
    cache = PriceCache(redis, settings.price_cache_ttl_s)
    store = PositionStore(redis, SystemClock())
    waiting: dict[str, asyncio.Future[tuple[float, float]]] = {}
    closed: dict[str, asyncio.Event] = {s: asyncio.Event() for s in trigger_symbols}
    pubsub = listener.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(keys.POSITION_EVENTS_CHANNEL)

    async def listen() -> None:
        async for message in pubsub.listen():
            event = json.loads(message["data"])
            symbol = event.get("symbol")
            if event.get("kind") == "closing" and symbol in waiting and not waiting[symbol].done():
                waiting[symbol].set_result((float(event["decided_at"]), float(event["at"])))
            elif event.get("kind") == "closed" and symbol in closed:
                closed[symbol].set()

    reader = asyncio.create_task(listen())
    samples: list[float] = []
    claimed: list[float] = []
    missed = 0
    try:
        deadline = time.monotonic() + timeout_s
        for i in range(triggers):
            if time.monotonic() > deadline:
                break
            symbol = trigger_symbols[i % len(trigger_symbols)]
            if i >= len(trigger_symbols):  # reopen the one closed a round ago
                try:
                    await asyncio.wait_for(closed[symbol].wait(), 5)
                except TimeoutError:
                    missed += 1
                    continue
                closed[symbol].clear()
                # Back above the stop first: reopened on its last (850) price, the sweep would rightly close it at
                # once, before the trigger, and the trigger would wait for a decision that was already taken.
                await cache.write_frame([Tick(symbol, "NSE_EQ|" + symbol, "1000.00")], time.time())
                await store.open(_position(symbol))
                await asyncio.sleep(0.002)  # let the monitor take the "opened" event
            waiting[symbol] = asyncio.get_running_loop().create_future()
            t0 = time.time()
            await cache.write_frame([Tick(symbol, "NSE_EQ|" + symbol, "850.00")], t0)
            try:
                decided_at, claimed_at = await asyncio.wait_for(waiting[symbol], 5)
                samples.append((decided_at - t0) * 1000)
                claimed.append((claimed_at - t0) * 1000)
            except TimeoutError:
                missed += 1
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await listener.aclose()
        await redis.aclose()
    stats = percentiles(samples, 50, 95, 99)
    return {
        "triggers": len(samples),
        "missed": missed,
        **stats,
        "max": round(max(samples, default=0), 3),
        "claim_ms": percentiles(claimed, 50, 95, 99),
    }


def run(
    services: Services,
    redis_url: str,
    *,
    positions: int,
    triggers: int,
    load_ticks_per_s: int,
    timeout_s: float,
    profile_s: float = 0.0,
) -> dict[str, Any]:
    """One tick -> decision run; returns p50/p95/p99 ms, counts and the monitor's CPU %."""
    settings = Settings(_env_file=None, redis_url=redis_url)  # type: ignore[call-arg]
    symbols = [f"POS{i:05d}" for i in range(positions)]
    trigger_symbols = symbols[-TRIGGER_GROUP:]
    background = symbols[: max(0, positions - TRIGGER_GROUP)] + [f"BG{i:05d}" for i in range(BACKGROUND_SYMBOLS)]

    async def setup() -> None:
        redis = create_redis(settings)
        await redis.flushall()
        await _open_all(PositionStore(redis, SystemClock()), symbols)
        cache = PriceCache(redis, settings.price_cache_ttl_s)
        for i in range(0, positions, 100):
            await cache.write_frame([Tick(s, "NSE_EQ|" + s, "1000.00") for s in symbols[i : i + 100]], time.time())
        await redis.aclose()

    asyncio.run(setup())
    env = services.base_env(BROKER="paper", MONITOR_SWEEP_INTERVAL_S="1", HEARTBEAT_TTL_S="30")
    with tempfile.NamedTemporaryFile("w", suffix=".symbols", delete=False) as f:
        f.write("\n".join(background))
        symbols_file = f.name
    try:
        services.start(
            "load",
            env,
            module="bench.load",
            args=(redis_url, str(load_ticks_per_s), str(timeout_s + 60), "@" + symbols_file),
        )
        monitor = services.start("monitor", env)
        services.wait_check("monitor", env)
        time.sleep(2.0)  # the monitor's first sweep over every position
        meter = CpuMeter(monitor.pid)
        meter.start()
        t0 = time.monotonic()
        result = asyncio.run(_measure(settings, trigger_symbols, triggers, timeout_s))
        wall = time.monotonic() - t0
        result.update(
            positions=positions,
            load_ticks_per_s=load_ticks_per_s,
            monitor_cpu_pct=meter.percent(),
            monitor_rss_mb=rss_mb(monitor.pid),
            duration_s=round(wall, 1),
        )
        if profile_s > 0:  # after the timed triggers, under the same background load: py-spy shares the 2 cores
            result["profile"] = profile.sample(monitor.pid, profile_s)
        return result
    finally:
        services.stop("monitor")
        services.stop("load")
        os.unlink(symbols_file)


def main() -> int:
    """`python -m bench.decision [POSITIONS ...]`: only this section, on its own private Redis (quick windows
    with BENCH_QUICK=1), printed as JSON; the figures to trust are ratios between back-to-back runs."""
    knobs = Knobs(quick=os.environ.get("BENCH_QUICK", "") not in ("", "0"))
    sizes = [int(a) for a in sys.argv[1:]] or [1000, 100, 10000]
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="guard-bench-") as tmp, private_redis(Path(tmp)) as server:
        services = Services(server.url, Path(tmp))
        try:
            for positions in sizes:
                out[str(positions)] = run(
                    services,
                    server.url,
                    positions=positions,
                    triggers=knobs.n(500 if positions == 100 else 2000, 300 if positions == 1000 else 150),
                    load_ticks_per_s=10_000,
                    timeout_s=knobs.s(12 if positions == 100 else 25, 10),
                    profile_s=float(os.environ.get("BENCH_PROFILE_S", "0")),
                )
                print(json.dumps({str(positions): out[str(positions)]}), flush=True)
        finally:
            services.stop_all()
            if os.environ.get("BENCH_LOGS"):  # keep the services' logs for a look afterwards
                shutil.copytree(Path(tmp) / "logs", os.environ["BENCH_LOGS"], dirs_exist_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
