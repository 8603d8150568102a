"""Dead connection detection and recovery, with the product's default timings (silence 7 s, backoff 5-10 s).

- mute: the simulator keeps the socket open (pings flow) but sends nothing; time until `feed:status`
  says connected false. This is the slow case; a dropped TCP connection (`drop`) is measured beside it.
- recovery: drop for a few seconds; from the moment the simulator accepts connections again (polled on its
  feeder port) to the first fresh price in Redis (the newest `prices:index` score newer than that moment),
  next to the backoff delay in force then (the feed's last `Waiting X.X seconds before retry` line).
- blip: the same for a 1 s drop (the first reconnect attempt goes at once, then the guide's backoff).
"""

from __future__ import annotations

import re
import socket
import time
from typing import Any, cast

import httpx
from redis import Redis as SyncRedis

from bench.env import Services
from bench.frames import extra_for
from libs.common import keys
from libs.common.events import decode_event

_WAITING = re.compile(r"Waiting (\d+(?:\.\d+)?) seconds before retry")
POLL_S = 0.02
BLIP_S = 1.0
BLIP_AFTER_LIVE_S = 7.0  # > RECONNECT_BASE_DELAY_S (5 s): the feed retries at once only after a link that lasted


def _connected(redis: SyncRedis) -> bool:
    return str(redis.hget(keys.FEED_STATUS, "connected")).lower() in ("true", "1")


def _until(condition: Any, timeout_s: float) -> float | None:
    """Epoch s when `condition()` first held (polled every 20 ms), None after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return time.time()
        time.sleep(POLL_S)
    return None


def _accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.05):
            return True
    except OSError:
        return False


def _dropped_since(redis: SyncRedis, since: float) -> float:
    """Epoch s of the feed's first recorded drop (a `feed_state` event, connected false) after `since`; 0 if none.
    Read from the events stream, not by polling `feed:status`: the first reconnect after a drop goes at once and
    can be live again within the poll interval, so a poll may never see the disconnected state."""
    rows = cast(list[tuple[str, dict[str, str]]], redis.xrange(keys.EVENTS_STREAM, min=f"{int(since * 1000)}-0"))
    for _, fields in rows:
        event = decode_event(fields)
        if event.get("kind") == "feed_state" and event.get("connected") is False and float(event["at"]) >= since:
            return float(event["at"])
    return 0.0


def _newest_as_of(redis: SyncRedis) -> float:
    rows = redis.zrevrange(keys.PRICE_INDEX, 0, 0, withscores=True)
    return float(rows[0][1]) if rows else 0.0


def run(services: Services, redis: SyncRedis, *, symbols: int, drop_s: float) -> dict[str, Any]:
    """Mute detection, drop detection, and recovery after a drop of `drop_s` seconds."""
    redis.flushall()
    env = services.base_env(
        SIM_EXTRA_INSTRUMENTS=str(extra_for(symbols)),
        SIM_TICK_INTERVAL_S="0.05",
        SIM_TICKS_PER_INTERVAL="100",
        HEARTBEAT_INTERVAL_S="0.5",
    )
    sim_url = f"http://127.0.0.1:{env['SIM_PORT']}"
    feed_port = int(env["SIM_FEED_PORT"])
    services.start("sim", env)
    services.wait_check("sim", env)
    services.start("feed", env)
    out: dict[str, Any] = {"symbols": symbols, "settings": "product defaults (silence 7 s, backoff 5-10 s)"}
    try:
        services.wait_check("feed", env)
        if _until(lambda: _connected(redis), 30) is None:
            raise RuntimeError("feed never connected")
        with httpx.Client(timeout=10) as http:
            # 1. mute: open socket, no data.
            t0 = time.time()
            http.post(sim_url + "/sim/faults", json={"kind": "mute", "duration_s": 15}).raise_for_status()
            t1 = _until(lambda: _dropped_since(redis, t0), 20)
            out["mute_detect_s"] = None if t1 is None else round(_dropped_since(redis, t0) - t0, 2)
            http.post(sim_url + "/sim/reset").raise_for_status()
            if _until(lambda: _connected(redis), 40) is None:
                raise RuntimeError("feed did not come back after mute")
            # 2. drop: TCP aborted, port closed for drop_s.
            log_mark = len(services.log("feed"))
            t0 = time.time()
            http.post(sim_url + "/sim/faults", json={"kind": "drop", "duration_s": drop_s}).raise_for_status()
            t1 = _until(lambda: _dropped_since(redis, t0), 20)
            out["drop_detect_s"] = None if t1 is None else round(_dropped_since(redis, t0) - t0, 2)
            time.sleep(max(0.0, drop_s - 0.5 - (time.time() - t0)))
            reopened = _until(lambda: _accepting(feed_port), drop_s + 10)
            if reopened is None:
                raise RuntimeError("simulator did not reopen its feeder port")
            fresh = _until(lambda: _newest_as_of(redis) > reopened, 40)
            waits = [float(m) for m in _WAITING.findall(services.log("feed")[log_mark:])]
            out["recovery_s"] = None if fresh is None else round(fresh - reopened, 2)
            out["backoff_delay_s"] = waits[-1] if waits else None
            out["retries_during_drop"] = len(waits)
            out["outage_s"] = None if fresh is None else round(fresh - t0, 2)
            # 3. a 1 s blip: the network goes away and comes back; how long after it returns are prices fresh?
            if _until(lambda: _connected(redis), 40) is None:
                raise RuntimeError("feed did not come back after the drop")
            time.sleep(BLIP_AFTER_LIVE_S)  # a link live this long gets its first attempt at once (not a flapping one)
            log_mark = len(services.log("feed"))
            http.post(sim_url + "/sim/faults", json={"kind": "drop", "duration_s": BLIP_S}).raise_for_status()
            reopened = _until(lambda: not _accepting(feed_port), 5) and _until(lambda: _accepting(feed_port), 10)
            if reopened is None:
                raise RuntimeError("simulator did not reopen its feeder port after the blip")
            fresh = _until(lambda: _newest_as_of(redis) > reopened, 40)
            out["blip_recovery_s"] = None if fresh is None else round(fresh - reopened, 2)
            out["blip_attempts"] = services.log("feed")[log_mark:].count("Reconnecting (attempt")
        return out
    finally:
        services.stop("feed")
        services.stop("sim")
