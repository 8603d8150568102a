"""The api process under load: connection health with N cached symbols, and emergency close under contention.

- health: N symbols written with `PriceCache.write_frame`, a live feed status; sequential GETs on one
  keep-alive connection give the latency, 8 concurrent clients give requests/s.
- emergency close: M open positions with cached prices (paper broker); every symbol gets two racing
  requests (8 in flight at a time): one closes, the other gets 409. Latency over all of them, and closes/s.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from bench import profile
from bench.env import CpuMeter, Services, percentiles, rss_mb
from bench.load import play_live_feed
from libs.common.clock import SystemClock
from libs.common.models import Position, Side
from libs.common.positions import PositionStore
from libs.common.price_cache import PriceCache, Tick
from libs.common.redis_client import create_redis
from libs.common.settings import Settings

HEALTH_PATH = "/api/v1/monitoring/connection-health"
CLOSE_PATH = "/api/v1/monitoring/emergency-close-position"
CONCURRENCY = 8


async def _seed(settings: Settings, symbols: int, positions: int) -> None:
    redis = create_redis(settings)
    try:
        await redis.flushall()
        cache = PriceCache(redis, settings.price_cache_ttl_s)
        names = [f"SYM{i:05d}" for i in range(symbols)]
        for i in range(0, symbols, 100):
            await cache.write_frame([Tick(s, "NSE_EQ|" + s, "1000.00") for s in names[i : i + 100]], time.time())
        store = PositionStore(redis, SystemClock())
        for s in names[:positions]:
            position = Position(
                symbol=s,
                instrument_key="NSE_EQ|" + s,
                side=Side.LONG,
                quantity=1,
                entry_price=100_000,
                stop_loss=50_000,
                take_profit=200_000,
                opened_at=time.time(),
            )
            await store.open(position)
    finally:
        await redis.aclose()
    await play_live_feed(settings, symbols)


async def _health(base: str, requests: int, rps_window_s: float) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        first = (await http.get(HEALTH_PATH)).json()
        samples: list[float] = []
        for _ in range(requests):
            t0 = time.perf_counter()
            resp = await http.get(HEALTH_PATH)
            samples.append((time.perf_counter() - t0) * 1000)
            resp.raise_for_status()
        done = 0
        deadline = time.perf_counter() + rps_window_s

        async def client() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                (await http.get(HEALTH_PATH)).raise_for_status()
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
        rps = done / (time.perf_counter() - t0)
    return {
        "cached_symbols_reported": first["price_cache"]["cached_symbols"],
        "entries_listed": len(first["price_cache"]["cache_entries"]),
        "requests": len(samples),
        **percentiles(samples, 50, 95, 99),
        "rps": round(rps),
    }


async def _emergency(base: str, positions: int) -> dict[str, Any]:
    samples: list[float] = []
    codes: dict[int, int] = {}
    gate = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:

        async def close(symbol: str) -> None:
            async with gate:
                t0 = time.perf_counter()
                resp = await http.post(CLOSE_PATH, json={"symbol": symbol, "reason": "emergency"})
                samples.append((time.perf_counter() - t0) * 1000)
                codes[resp.status_code] = codes.get(resp.status_code, 0) + 1

        names = [f"SYM{i:05d}" for i in range(positions)]
        t0 = time.perf_counter()
        await asyncio.gather(*(close(s) for s in names for _ in range(2)))
        wall = time.perf_counter() - t0
    return {
        "positions": positions,
        "requests": len(samples),
        "status_counts": {str(k): v for k, v in sorted(codes.items())},
        **percentiles(samples, 50, 95, 99),
        "closes_per_s": round(codes.get(200, 0) / wall),
        "requests_per_s": round(len(samples) / wall),
    }


def run(
    services: Services,
    redis_url: str,
    *,
    symbols: int,
    requests: int,
    rps_window_s: float,
    positions: int,
    profile_s: float = 0.0,
) -> dict[str, Any]:
    """Health latency/rps at `symbols` cached symbols; emergency close of `positions` (0 = skip)."""
    settings = Settings(_env_file=None, redis_url=redis_url, heartbeat_ttl_s=600)  # type: ignore[call-arg]
    asyncio.run(_seed(settings, symbols, positions))
    env = services.base_env(BROKER="paper", HEARTBEAT_TTL_S="600")
    api = services.start("api", env)
    try:
        services.wait_check("api", env)
        base = f"http://127.0.0.1:{env['API_PORT']}"
        meter = CpuMeter(api.pid)
        meter.start()
        result: dict[str, Any] = {"symbols": symbols, "health": asyncio.run(_health(base, requests, rps_window_s))}
        result["api_cpu_pct"] = meter.percent()
        result["api_rss_mb"] = rss_mb(api.pid)
        if profile_s > 0:  # profiled apart from the timed requests: py-spy would share the 2 cores with them
            with ThreadPoolExecutor(1) as pool:
                sampled = pool.submit(profile.sample, api.pid, profile_s)
                asyncio.run(_health(base, 0, profile_s))
                result["profile"] = sampled.result()
        if positions:
            result["emergency_close"] = asyncio.run(_emergency(base, positions))
        return result
    finally:
        services.stop("api")
