"""Ingest: ticks/s the feed process takes off the WebSocket into Redis, sustained over a window, and its CPU.

Two sources, both real processes over a real WebSocket on loopback:
- `sim`: the simulator (`python -m services.sim`) pushing ~100-tick frames as fast as configured;
  it shares the 2 cores with the feed, so it may be the limit (its CPU is reported beside the feed's);
- `replay`: `bench.replay` sending pre-encoded 100-tick frames back to back (paced by the reader), which
  isolates the feed's own decode + write capacity.
Ticks are counted on the Redis side from INFO commandstats: every tick the feed writes is one EXPIRE inside
its frame script (the index ZADD is batched per 500 ticks, so it does not count ticks; vouching, which also
EXPIREs, is pushed out of the window), every frame one PUBLISH. When the decoder falls behind it keeps only the
newest tick of each symbol (a price is a level: Redis ends up exactly as if every tick had been written); the
older ones are counted in the feed's `superseded_ticks`. Ingested = written + superseded; both are reported.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from redis import Redis as SyncRedis

from bench import profile
from bench.env import CpuMeter, Services, command_calls, rss_mb
from bench.frames import extra_for
from libs.common import keys
from tests.helpers import free_port

TARGET_TICKS_PER_S = 50_000


def _wait_flowing(redis: SyncRedis, services: Services, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    start = command_calls(redis, "expire")["expire"]
    while time.monotonic() < deadline:
        if command_calls(redis, "expire")["expire"] > start + 1000:
            return
        for name, proc in services.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {services.output(name)[-1500:]}")
        time.sleep(0.2)
    raise RuntimeError(f"no ticks reached Redis within {timeout_s}s: {services.log('feed')[-1500:]}")


def run(
    services: Services,
    redis: SyncRedis,
    redis_pid: int,
    *,
    source: str,
    symbols: int,
    duration_s: float,
    profile_s: float = 0.0,
) -> dict[str, Any]:
    """One ingest window; returns ticks/s, frames/s, ticks per frame and CPU % of feed, source and Redis."""
    redis.flushall()
    redis.config_resetstat()
    env = services.base_env(
        SIM_EXTRA_INSTRUMENTS=str(extra_for(symbols)),
        VOUCH_INTERVAL_S="3600",  # keep vouch ZADDs out of the count
        FEED_SILENCE_TIMEOUT_S="30",
        HEARTBEAT_INTERVAL_S="0.5",
    )
    if source == "sim":
        env.update(SIM_TICK_INTERVAL_S="0.002", SIM_TICKS_PER_INTERVAL="100")  # asks for 50,000 ticks/s
        services.start("sim", env)
        services.wait_check("sim", env)
    else:
        port = free_port()
        env.update(SIM_PORT=str(port))  # default ping settings: the feed's reader keeps pongs on time saturated
        services.start("sim", env, module="bench.replay", args=(str(port), str(symbols)))
        # The replay answers only the authorize path; the feed needs nothing else from it.
        _wait_port(port)
    try:
        feed = services.start("feed", env)
        services.wait_check("feed", env)
        _wait_flowing(redis, services)
        time.sleep(1.0)  # past the snapshot and the first burst
        meters = {
            "feed": CpuMeter(feed.pid),
            "source": CpuMeter(services.procs["sim"].pid),
            "redis": CpuMeter(redis_pid),
        }
        for m in meters.values():
            m.start()
        log_mark = len(services.log("feed"))
        before = command_calls(redis, "expire", "publish")
        superseded_before = _superseded(redis)
        t0 = time.monotonic()
        time.sleep(duration_s)
        after = command_calls(redis, "expire", "publish")
        wall = time.monotonic() - t0
        cpu = {name: m.percent() for name, m in meters.items()}
        ticks = after["expire"] - before["expire"]
        frames = after["publish"] - before["publish"]
        # Counted up to the feed's last status flush (every heartbeat interval, 0.5 s here) before the window ends.
        superseded = _superseded(redis) - superseded_before
        result: dict[str, Any] = {
            "source": source,
            "symbols": symbols,
            "duration_s": round(wall, 1),
            # Ingested: every tick taken off the wire whose price Redis holds (written, or superseded by a newer
            # tick of the same symbol that was written); `written` counts the script's writes alone.
            "ticks_per_s": round((ticks + superseded) / wall),
            "written_ticks_per_s": round(ticks / wall),
            "frames_per_s": round(frames / wall),
            "ticks_per_frame": round(ticks / frames, 1) if frames else 0,
            "cpu_pct": cpu,
            "reconnects": services.log("feed")[log_mark:].count("Reconnecting (attempt"),
            "superseded_ticks": superseded,
            "feed_rss_mb": rss_mb(feed.pid),
        }
        if profile_s > 0:
            result["profile"] = profile.sample(feed.pid, profile_s)
        return result
    finally:
        services.stop("feed")
        services.stop("sim")


def _wait_port(port: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"replay feeder did not listen on {port}")


def _superseded(redis: SyncRedis) -> int:
    return int(redis.hget(keys.FEED_STATUS, "superseded_ticks") or 0)
