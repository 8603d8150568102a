"""Fault-injection harness: the whole system as real processes on loopback, driven from outside.

    async with Stack(tmp_path, PRICE_STALE_AFTER_S="2") as stack:
        await stack.start("sim", "feed", "monitor", "api")
        await stack.open_position("BOSCHLTD", "long", 10, 735.0, stop_loss=698.25)
        await stack.fault("drop", 5)
        stack.kill("feed")  # SIGKILL
        await stack.restart_redis()
        assert "[SL] BOSCHLTD" in stack.log("monitor")

Every process gets a private redis-server (AOF on, so a restart keeps positions), free ports, compressed
time through settings, its own log file under `tmp_path/logs`, and `tmp_path` as its working directory
(so a developer's `.env` never leaks in).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
from redis.asyncio import Redis

from libs.common.redis_client import create_redis
from libs.common.settings import Settings
from tests.helpers import RedisServer, eventually, free_port

SERVICES = ("sim", "feed", "monitor", "api")

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
            **{k: v for k, v in os.environ.items() if not k.startswith(("UPSTOX_", "API_", "SIM_", "REDIS_"))},
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
        self.redis: Redis | None = None
        self.http = httpx.AsyncClient(timeout=10)

    # --- lifecycle -----------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self.redis_server.start()
        self.redis = create_redis(self.settings())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for name in list(self.procs):
            self.stop(name)
        await self.http.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        self.redis_server.stop()

    def settings(self) -> Settings:
        """The settings the services see (for reading Redis with the shared library)."""
        env = {k.lower(): v for k, v in self.env.items() if k in {n.upper() for n in Settings.model_fields}}
        return Settings(_env_file=None, **env)  # type: ignore[call-arg, arg-type]

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def sim_url(self) -> str:
        return f"http://127.0.0.1:{self.sim_port}"

    async def start(self, *names: str, wait: bool = True) -> None:
        """Start services (in order) and wait until each one's `--check` passes."""
        for name in names:
            with (self.logs / f"{name}.stdout").open("ab") as log:  # the child keeps its own descriptor
                self.procs[name] = subprocess.Popen(  # noqa: ASYNC220 - spawning does not block
                    [sys.executable, "-m", f"services.{name}"], cwd=self.tmp, env=self.env, stdout=log, stderr=log
                )
            if wait:
                await self.wait_healthy(name)

    async def wait_healthy(self, name: str, timeout_s: float = 20) -> None:
        async def healthy() -> bool:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.output(name)[-3000:]}")
            return self.check(name) == 0

        await eventually(healthy, timeout_s=timeout_s, interval_s=0.1)

    def check(self, name: str) -> int:
        """Exit code of `python -m services.NAME --check` as a user would run it."""
        return subprocess.run(
            [sys.executable, "-m", f"services.{name}", "--check"], cwd=self.tmp, env=self.env, check=False
        ).returncode

    def stop(self, name: str) -> None:
        """SIGTERM and wait (a clean stop)."""
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self, name: str) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait()

    async def restart_redis(self, down_s: float = 1.0) -> None:
        """Stop Redis (AOF keeps the data), wait, start it again on the same port."""
        self.redis_server.stop()
        await asyncio.sleep(down_s)
        self.redis_server.start()

    # --- observations --------------------------------------------------------------------------
    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def output(self, name: str) -> str:
        path = self.logs / f"{name}.stdout"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    async def wait_log(self, name: str, text: str, timeout_s: float = 15) -> str:
        """Wait until `text` appears in the service's log; returns the log."""

        def found() -> str:
            log = self.log(name)
            return log if text in log else ""

        return await eventually(found, timeout_s=timeout_s)

    # --- the api, as a person would use it -----------------------------------------------------
    async def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return await self.http.request(method, self.api_url + path, **kw)

    async def health(self, **params: str) -> dict[str, Any]:
        resp = await self.api("GET", "/api/v1/monitoring/connection-health", params=params)
        resp.raise_for_status()
        return dict(resp.json())

    async def open_position(self, symbol: str, side: str, quantity: int, entry: float, **levels: float) -> None:
        body = {"symbol": symbol, "side": side, "quantity": quantity, "entry_price": entry, **levels}
        resp = await self.api("POST", "/api/v1/positions", json=body)
        assert resp.status_code in (200, 201), resp.text

    # --- the simulator's controls ----------------------------------------------------------------
    async def sim(self, method: str, path: str, **kw: Any) -> Any:
        resp = await self.http.request(method, self.sim_url + path, **kw)
        resp.raise_for_status()
        return resp.json()

    async def set_price(self, symbol: str, ltp: float) -> None:
        await self.sim("POST", "/sim/price", json={"symbol": symbol, "ltp": ltp})

    async def fault(self, kind: str, duration_s: float) -> None:
        await self.sim("POST", "/sim/faults", json={"kind": kind, "duration_s": duration_s})

    async def orders(self) -> list[dict[str, Any]]:
        body = await self.sim("GET", "/sim/orders")
        return list(body["data"] if isinstance(body, dict) and "data" in body else body)


def elapsed(since: float) -> float:
    return time.monotonic() - since
