"""Fault-injection harness: the whole system as real processes on loopback, driven from outside.

    async with Stack(tmp_path, PRICE_STALE_AFTER_S="2") as stack:
        await stack.start("sim", "feed", "monitor", "api")
        await stack.open_position("BOSCHLTD", "long", 10, 735.0, stop_loss=698.25)
        await stack.fault("drop", 5)
        stack.kill("feed")  # SIGKILL
        await stack.restart_redis()
        await stack.wait_log("monitor", "[SL] BOSCHLTD")
        assert stack.count("monitor", "[SL] BOSCHLTD") == 1

Services start in parallel and are ready when their heartbeat key is fresh (spawning `--check` costs
seconds of interpreter start-up on a small machine; `stack.check(name)` still runs it as a user would).
`stack.start("feed", env={...})` gives one service extra settings (kept for its restarts).

Every process gets a private redis-server (AOF on, so a restart keeps positions), free ports, compressed
time through settings, its own log file under `tmp_path/logs`, and a sealed environment with `tmp_path` as its
working directory (`tests.helpers.sealed_child`: a developer's exports and `.env` never leak in).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
from redis.asyncio import Redis

from libs.common import keys
from libs.common.clock import SystemClock
from libs.common.closing import TAG_PREFIX
from libs.common.heartbeat import heartbeat_age_s
from libs.common.models import FeedStatus, Position
from libs.common.positions import PositionStore
from libs.common.redis_client import create_redis
from libs.common.settings import Settings
from tests.helpers import ChildPlace, RedisServer, eventually, free_port, sealed_child, terminate

SERVICES = ("sim", "feed", "monitor", "api", "alerts")
_STOP_ORDER = ("alerts", "api", "monitor", "feed", "sim")

# Time compressed so a scenario takes seconds; a test overrides what it needs.
FAST = {
    "SIM_TICK_INTERVAL_S": "0.1",
    "RECONNECT_BASE_DELAY_S": "0.5",
    "RECONNECT_MAX_DELAY_S": "1.0",
    "AUTH_RETRY_DELAY_S": "1.0",
    "WS_PING_INTERVAL_S": "0.5",
    "WS_PING_TIMEOUT_S": "0.5",
    "WS_OPEN_TIMEOUT_S": "2",
    "FEED_SILENCE_TIMEOUT_S": "1.5",
    "VOUCH_INTERVAL_S": "0.3",
    "HEARTBEAT_INTERVAL_S": "0.2",
    "HEARTBEAT_TTL_S": "2",
    "MONITOR_SWEEP_INTERVAL_S": "0.2",
    "CLOSE_RETRY_BASE_S": "0.3",
    "CLOSE_RETRY_MAX_S": "1.0",
    "TOKEN_PROBE_CACHE_S": "0.5",
    "DNS_TIMEOUT_S": "0.5",
    "REDIS_RETRIES": "2",
    "REDIS_CONNECT_TIMEOUT_S": "0.5",
    "REDIS_SOCKET_TIMEOUT_S": "2",
    "FEED_METRICS_PORT": "0",  # metrics off unless a test asks (tests run side by side; 9101/9102 may be taken)
    "MONITOR_METRICS_PORT": "0",
    "ALERTS_METRICS_PORT": "0",
    # Layer 0 fires at the simulator the moment a price jumps through a GTT, before the guard sees the tick: these
    # scenarios test layers 1-3 and the close path alone; tests/e2e/test_safety_net.py turns it on with them.
    "SAFETY_NET": "off",
}


class Stack:
    """Redis + the four services as subprocesses, with controls for faults and kills."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.tmp = tmp_path
        self.logs = tmp_path / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.redis_server = RedisServer(free_port(), str(tmp_path), appendonly=True)
        self.sim_port = free_port()
        self.api_port = free_port()
        self.env: dict[str, str] = {
            **FAST,
            "REDIS_URL": self.redis_server.url,
            "SIM_PORT": str(self.sim_port),
            "SIM_FEED_PORT": str(free_port()),
            "API_PORT": str(self.api_port),
            "LOG_DIR": str(self.logs),
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.service_env: dict[str, dict[str, str]] = {}
        self.paused: set[str] = set()
        self._redis: Redis | None = None
        self.http = httpx.AsyncClient(timeout=10)
        self._sim_http: httpx.AsyncClient | None = None

    # --- lifecycle -----------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self.redis_server.start()
        self._redis = create_redis(self.settings())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.dump_logs()  # pytest shows it with the failure
        for name in list(self.paused):
            self.resume(name)
        for name in sorted(self.procs, key=_STOP_ORDER.index):  # the simulator last: the others talk to it
            self.stop(name)
        await self.http.aclose()
        if self._sim_http is not None:
            await self._sim_http.aclose()
        if self._redis is not None:
            await self._redis.aclose()
        self.redis_server.stop()

    @property
    def redis(self) -> Redis:
        """A client of the stack's Redis (it reconnects by itself after `restart_redis`)."""
        assert self._redis is not None, "use Stack as an async context manager"
        return self._redis

    @property
    def store(self) -> PositionStore:
        return PositionStore(self.redis, SystemClock())

    def dump_logs(self, tail: int = 60) -> None:
        for name in SERVICES:
            text = self.log(name) or self.output(name)
            if text:
                print(f"----- {name} (last {tail} lines) -----")
                print("\n".join(text.splitlines()[-tail:]))

    def settings(self) -> Settings:
        """The settings the services see (for reading Redis with the shared library)."""
        env: dict[str, Any] = {k.lower(): v for k, v in self.env.items() if k.lower() in Settings.model_fields}
        lists = {k: json.loads(v) for k, v in env.items() if v.startswith("[")}  # JSON lists, as from the environment
        return Settings(_env_file=None, **{**env, **lists})  # type: ignore[call-arg, arg-type]

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def sim_url(self) -> str:
        return f"{'https' if self.sim_tls else 'http'}://127.0.0.1:{self.sim_port}"

    async def start(self, *names: str, wait: bool = True, env: dict[str, str] | None = None) -> None:
        """Start services together and wait until each one's heartbeat is fresh.

        "sim" is started (and awaited) first when named: the others talk to it. `env` adds settings to
        these services, kept for their later restarts.
        """
        names_left = list(names)
        if "sim" in names_left and len(names_left) > 1:
            names_left.remove("sim")
            await self.start("sim", wait=True, env=env)
        for name in names_left:
            if env is not None:
                self.service_env[name] = {**self.service_env.get(name, {}), **env}
            await self.redis.delete(keys.heartbeat(name))  # a restart must not pass on its predecessor's beat
            with (self.logs / f"{name}.stdout").open("ab") as log:  # the child keeps its own descriptor
                self.procs[name] = subprocess.Popen(  # noqa: ASYNC220 - spawning does not block
                    [sys.executable, "-m", f"services.{name}"], stdout=log, stderr=log, **self.place_of(name)
                )
        if wait:
            await asyncio.gather(*(self.wait_healthy(name) for name in names_left))

    def env_of(self, name: str) -> dict[str, str]:
        return {**self.env, **self.service_env.get(name, {})}

    def place_of(self, name: str) -> ChildPlace:
        """The sealed environment and working directory of service `name` (see `tests.helpers.sealed_child`)."""
        return sealed_child(self.tmp, **self.env_of(name))

    async def wait_healthy(self, name: str, timeout_s: float = 30) -> None:
        ttl_s = float(self.env["HEARTBEAT_TTL_S"])

        async def healthy() -> bool:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.output(name)[-3000:]}")
            age = await heartbeat_age_s(self.redis, name, SystemClock())
            return age is not None and age < ttl_s

        await eventually(healthy, timeout_s=timeout_s, interval_s=0.1)

    async def restart(self, name: str, env: dict[str, str] | None = None) -> None:
        """Clean stop (SIGTERM) and start again, waiting for its heartbeat."""
        self.stop(name)
        await self.start(name, env=env)

    def check(self, name: str) -> int:
        """Exit code of `python -m services.NAME --check` as a user would run it."""
        return subprocess.run(
            [sys.executable, "-m", f"services.{name}", "--check"], check=False, **self.place_of(name)
        ).returncode

    def alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def pause(self, name: str) -> None:
        """SIGSTOP: the process hangs (its sockets accept, nothing answers), like a stuck host."""
        os.kill(self.procs[name].pid, signal.SIGSTOP)
        self.paused.add(name)

    def resume(self, name: str) -> None:
        os.kill(self.procs[name].pid, signal.SIGCONT)
        self.paused.discard(name)

    def stop(self, name: str) -> None:
        """SIGTERM and wait (a clean stop)."""
        proc = self.procs.pop(name, None)
        if proc is not None:
            terminate(proc)

    def kill(self, name: str) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait()

    async def restart_redis(self, down_s: float = 1.0) -> None:
        """Stop Redis (AOF keeps the data), wait, start it again on the same port."""
        self.stop_redis()
        await asyncio.sleep(down_s)  # the outage itself: nothing to wait for
        self.start_redis()

    def stop_redis(self, kill: bool = False) -> None:
        self.redis_server.stop(kill=kill)

    def start_redis(self) -> None:
        self.redis_server.start()

    # --- observations --------------------------------------------------------------------------
    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def output(self, name: str) -> str:
        path = self.logs / f"{name}.stdout"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def mark(self, name: str) -> int:
        """A position in the service's log: pass it as `since` to look only at what came after."""
        return len(self.log(name))

    def lines(self, name: str, since: int = 0) -> list[str]:
        """The log's lines as the guide prints them: `[TAG] message` (no time, no `| service:module`)."""
        return [_message(line) for line in self.log(name)[since:].splitlines() if _LINE.match(line)]

    def timed(self, name: str, since: int = 0) -> list[tuple[datetime, str]]:
        """(time, `[TAG] message`) of each log line."""
        out = []
        for line in self.log(name)[since:].splitlines():
            m = _LINE.match(line)
            if m:
                out.append((datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f"), _message(line)))
        return out

    def count(self, name: str, text: str, since: int = 0) -> int:
        """How many log lines contain `text`."""
        return sum(text in line for line in self.lines(name, since))

    async def wait_log(self, name: str, text: str, timeout_s: float = 15, since: int = 0) -> str:
        """Wait until a line containing `text` appears in the service's log; returns that line."""

        def found() -> str:
            return next((line for line in self.lines(name, since) if text in line), "")

        return await eventually(found, timeout_s=timeout_s)

    async def feed_status(self) -> FeedStatus:
        return FeedStatus.from_redis(await self.redis.hgetall(keys.FEED_STATUS))

    async def position(self, symbol: str) -> Position:
        position = await self.store.get(symbol)
        assert position is not None, f"no position on {symbol}"
        return position

    async def price(self, symbol: str) -> dict[str, str]:
        return dict(await self.redis.hgetall(keys.price(symbol)))

    async def wait_connected(self, connected: bool = True, timeout_s: float = 20) -> dict[str, Any]:
        """Wait until connection-health says `websocket.connected` is `connected`; returns that answer."""

        async def answer() -> dict[str, Any] | None:
            health = await self.health()
            return health if health["websocket"]["connected"] is connected else None

        return await eventually(answer, timeout_s=timeout_s, interval_s=0.1)

    # --- the api, as a person would use it -----------------------------------------------------
    async def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return await self.http.request(method, self.api_url + path, **kw)

    async def health(self, **params: str) -> dict[str, Any]:
        resp = await self.api("GET", "/api/v1/monitoring/connection-health", params=params)
        resp.raise_for_status()
        return dict(resp.json())

    async def status(self) -> dict[str, Any]:
        resp = await self.api("GET", "/api/v1/monitoring/status")
        resp.raise_for_status()
        return dict(resp.json())

    async def open_position(
        self, symbol: str, side: str, quantity: int, entry: float, *, at_broker: bool = True, **levels: float
    ) -> None:
        """Register a position; with `at_broker` the bot's entry is placed first (`POST /sim/trade`), so the
        broker holds what the guard is told about, as it must."""
        if at_broker:
            trade = {"symbol": symbol, "side": "buy" if side == "long" else "sell", "quantity": quantity}
            await self.sim("POST", "/sim/trade", json=trade)
        body = {"symbol": symbol, "side": side, "quantity": quantity, "entry_price": entry, **levels}
        resp = await self.api("POST", "/api/v1/positions", json=body)
        assert resp.status_code in (200, 201), resp.text

    async def emergency_close(self, symbol: str, reason: str = "emergency") -> httpx.Response:
        body = {"symbol": symbol, "reason": reason}
        return await self.api("POST", "/api/v1/monitoring/emergency-close-position", json=body)

    async def closes(self) -> list[dict[str, Any]]:
        """The api's journal of closes, newest first."""
        resp = await self.api("GET", "/api/v1/positions/closed", params={"limit": 1000})
        resp.raise_for_status()
        return list(resp.json()["closes"])

    async def events(self, count: int = 200) -> list[dict[str, Any]]:
        """The newest position events (the `events` stream), newest first."""
        return await self.store.recent_events(count)

    # --- the simulator's controls ----------------------------------------------------------------
    async def sim(self, method: str, path: str, **kw: Any) -> Any:
        if self._sim_http is None:
            ca = self.env_of("sim").get("SIM_TLS_CA_PATH")
            verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca) if self.sim_tls and ca else True
            self._sim_http = httpx.AsyncClient(timeout=10, verify=verify)
        resp = await self._sim_http.request(method, self.sim_url + path, **kw)
        resp.raise_for_status()
        return resp.json()

    @property
    def sim_tls(self) -> bool:
        return self.env_of("sim").get("SIM_TLS", "").lower() in ("1", "true", "yes")

    async def set_price(self, symbol: str, ltp: float) -> None:
        await self.sim("POST", "/sim/price", json={"symbol": symbol, "ltp": ltp})

    async def fault(self, kind: str, duration_s: float) -> None:
        await self.sim("POST", "/sim/faults", json={"kind": kind, "duration_s": duration_s})

    async def sim_state(self) -> dict[str, Any]:
        return dict(await self.sim("GET", "/sim/state"))

    async def orders(self, symbol: str | None = None) -> list[dict[str, Any]]:
        """The guard's orders at the simulator (tagged with a close tag; entries and app trades are not)."""
        body = await self.sim("GET", "/sim/orders")
        rows = list(body["data"] if isinstance(body, dict) and "data" in body else body)
        guard = [o for o in rows if str(o.get("tag") or "").startswith(TAG_PREFIX)]
        return [o for o in guard if symbol is None or o["trading_symbol"] == symbol]


_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) (\[[A-Z]+\] .*)$")


def _message(line: str) -> str:
    m = _LINE.match(line)
    text = m.group(2) if m else line
    return text.rsplit(" | ", 1)[0]


def elapsed(since: float) -> float:
    return time.monotonic() - since
