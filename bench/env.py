"""What every measurement shares: the run's knobs, a private Redis, spawned services, CPU and percentiles.

Every service runs as `python -m services.NAME` with its environment built here (loopback, free ports,
no developer `.env`: the working directory is a fresh temporary one). Every wait is bounded.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis import Redis as SyncRedis

from tests.helpers import RedisServer, free_port, terminate

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Environment variables a developer might have set that must not leak into a measured service.
_SCRUB = ("UPSTOX_", "API_", "SIM_", "REDIS_", "FEED_", "PRICE_", "RECONNECT_", "MONITOR_", "BROKER", "LOG_")


@dataclass
class Knobs:
    """Durations and sizes of one run; `quick` shortens everything (BENCH_QUICK=1)."""

    quick: bool

    def s(self, full: float, quick: float) -> float:
        return quick if self.quick else full

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full


def machine() -> dict[str, Any]:
    """nproc, CPU model, Python and Redis versions, for the report header."""
    model = ""
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False).stdout
    return {
        "nproc": os.cpu_count() or 0,
        "cpu_model": model,
        "python": platform.python_version(),
        "redis": redis_version.split("v=")[1].split()[0] if "v=" in redis_version else redis_version.strip(),
        "kernel": platform.release(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "loadavg_1m": round(os.getloadavg()[0], 2),  # what else runs: figures from a busy machine read as such
    }


def percentiles(samples_ms: list[float], *qs: int) -> dict[str, float]:
    """{"p50": .., "p95": ..} (nearest-rank) of `samples_ms`, rounded to 0.001 ms; empty input gives {}."""
    if not samples_ms:
        return {}
    ordered = sorted(samples_ms)
    out: dict[str, float] = {}
    for q in qs:
        rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))  # the ceil(q% of n)-th
        out[f"p{q}"] = round(ordered[rank], 3)
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    """Resident memory of a process now, in MB (VmRSS from /proc/PID/status)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


class CpuMeter:
    """CPU share of a process over a window: `start()`, then `percent()` (100 = one full core)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._cpu0 = 0.0
        self._t0 = 0.0

    def start(self) -> None:
        self._cpu0 = cpu_seconds(self.pid)
        self._t0 = time.monotonic()

    def percent(self) -> float:
        return round(100 * (cpu_seconds(self.pid) - self._cpu0) / max(1e-9, time.monotonic() - self._t0), 1)


def command_calls(redis: SyncRedis, *commands: str) -> dict[str, int]:
    """Calls per command from INFO commandstats (commands run inside scripts are counted too)."""
    stats = redis.info("commandstats")
    return {c: int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in commands}


@dataclass
class Services:
    """Services spawned as real processes against one Redis, each with its own log file."""

    redis_url: str
    workdir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def base_env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB)}
        env.update(
            {
                "REDIS_URL": self.redis_url,
                "LOG_DIR": str(self.workdir / "logs"),
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": str(ROOT),
                "SIM_PORT": str(free_port()),
                "SIM_FEED_PORT": str(free_port()),
                "API_PORT": str(free_port()),
            }
        )
        env.update(extra)
        return env

    def start(
        self, name: str, env: Mapping[str, str], module: str | None = None, args: tuple[str, ...] = ()
    ) -> subprocess.Popen[bytes]:
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        with (self.workdir / "logs" / f"{name}.stdout").open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", module or f"services.{name}", *args],
                cwd=self.workdir,
                env=dict(env),
                stdout=out,
                stderr=out,
            )
        self.procs[name] = proc
        return proc

    def wait_check(self, name: str, env: Mapping[str, str], timeout_s: float = 30) -> None:
        """Wait until `python -m services.NAME --check` passes (its heartbeat is fresh)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: {self.output(name)[-2000:]}")
            rc = subprocess.run(
                [sys.executable, "-m", f"services.{name}", "--check"],
                cwd=self.workdir,
                env=dict(env),
                capture_output=True,
                check=False,
            ).returncode
            if rc == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"{name} not healthy within {timeout_s}s: {self.output(name)[-2000:]}")

    def output(self, name: str) -> str:
        path = self.workdir / "logs" / f"{name}.stdout"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def log(self, name: str) -> str:
        path = self.workdir / "logs" / f"{name}.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else self.output(name)

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            terminate(proc)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def service_ready(name: str) -> bool:
    """True when `services/NAME` can run (`python -m services.NAME` has a `__main__`)."""
    return (ROOT / "services" / name / "__main__.py").exists()


@contextmanager
def private_redis(workdir: Path) -> Iterator[RedisServer]:
    """A private redis-server on a free loopback port (no persistence), flushed by the caller as needed."""
    server = RedisServer(free_port(), str(workdir))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def elapsed_ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000
