"""The HA topology as real processes: Redis master + replica + three Sentinels, services run more than once.

    async with HAStack(tmp_path) as stack:
        await stack.start("sim")
        await stack.start_instances(("feed", "a"), ("feed", "b"), ("monitor", "a"), ("api", "a"))
        stack.kill("feed@a")
        old = stack.topology.kill_master()

An instance is named `SERVICE@INSTANCE`; it runs `python -m services.SERVICE` with `INSTANCE_NAME=INSTANCE`, its
own `LOG_DIR` (so `stack.log("feed@a")` is that process's log) and, for an api, its own port. Everything
else (kill, pause, wait_log, the simulator's controls, ...) is `tests.e2e.harness.Stack`'s.
"""

from __future__ import annotations

import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from libs.common import keys
from libs.common.clock import SystemClock
from libs.common.closing import TAG_PREFIX
from libs.common.feed_lease import read_leadership
from libs.common.heartbeat import heartbeat_age_s
from libs.common.redis_client import create_redis
from tests.e2e.harness import Stack
from tests.ha.topology import Topology, sentinel_topology
from tests.helpers import eventually, free_port


class HAStack(Stack):
    """`Stack` on a Sentinel topology, with several instances per service."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        super().__init__(tmp_path, **env)
        self._exit = ExitStack()
        self._topology: Topology | None = None
        self.api_ports: dict[str, int] = {}

    @property
    def topology(self) -> Topology:
        assert self._topology is not None, "use HAStack as an async context manager"
        return self._topology

    async def __aenter__(self) -> Self:
        self._topology = self._exit.enter_context(sentinel_topology(self.tmp / "redis"))
        self.env["REDIS_SENTINELS"] = self.topology.sentinels_setting
        self.env["REDIS_URL"] = "redis://127.0.0.1:1/0"  # only its database number is used with Sentinels
        await self.topology.wait_ready()
        await self.topology.wait_replicas(len(self.topology.data) - 1)  # in sync: WAIT counts only online replicas
        self._redis = create_redis(self.settings())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.dump_instance_logs()
        for name in list(self.paused):
            self.resume(name)
        for name in [n for n in self.procs if "@" in n]:
            self.stop(name)
        try:
            await super().__aexit__(exc_type, exc, tb)
        finally:
            self._exit.close()

    async def start_instances(self, *instances: tuple[str, str], wait: bool = True) -> None:
        """Start `(service, instance)` processes together; wait until each one's own heartbeat is fresh."""
        for service, instance in instances:
            name = f"{service}@{instance}"
            env = {"INSTANCE_NAME": instance, "LOG_DIR": str(self.logs / name)}
            if service == "api":  # the first api gets the stack's api port, so Stack's api helpers use it
                self.api_ports.setdefault(instance, free_port() if self.api_ports else self.api_port)
                env["API_PORT"] = str(self.api_ports[instance])
            self.service_env[name] = {**self.service_env.get(name, {}), **env}
            await self.redis.delete(keys.heartbeat(service, instance))
            with (self.logs / f"{name}.stdout").open("ab") as log:
                self.procs[name] = subprocess.Popen(  # noqa: ASYNC220 - spawning does not block
                    [sys.executable, "-m", f"services.{service}"], stdout=log, stderr=log, **self.place_of(name)
                )
        if wait:
            for service, instance in instances:
                await self.wait_instance(service, instance)

    async def wait_instance(self, service: str, instance: str, timeout_s: float = 30) -> None:
        name = f"{service}@{instance}"
        ttl_s = float(self.env["HEARTBEAT_TTL_S"])

        async def healthy() -> bool:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.output(name)[-3000:]}")
            age = await heartbeat_age_s(self.redis, service, SystemClock(), instance)
            return age is not None and age < ttl_s

        await eventually(healthy, timeout_s=timeout_s, interval_s=0.1)

    def check_instance(self, service: str, instance: str) -> int:
        """Exit code of `python -m services.SERVICE --check` run as that instance."""
        return subprocess.run(
            [sys.executable, "-m", f"services.{service}", "--check"],
            check=False,
            **self.place_of(f"{service}@{instance}"),
        ).returncode

    def log(self, name: str) -> str:
        if "@" not in name:
            return super().log(name)
        path = self.logs / name / f"{name.split('@')[0]}.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def dump_instance_logs(self, tail: int = 60) -> None:
        for name in sorted({*self.procs, *self.service_env}):
            text = self.log(name) or self.output(name)
            if "@" in name and text:
                print(f"----- {name} (last {tail} lines) -----")
                print("\n".join(text.splitlines()[-tail:]))

    def api_of(self, instance: str) -> str:
        return f"http://127.0.0.1:{self.api_ports[instance]}"

    async def api_at(self, instance: str, method: str, path: str, **kw: Any) -> httpx.Response:
        return await self.http.request(method, self.api_of(instance) + path, **kw)

    async def close_orders(self, symbol: str) -> list[dict[str, Any]]:
        """The guard's close orders for `symbol` at the simulated broker (tagged `guard-close-...`)."""
        return [o for o in await self.orders(symbol) if str(o.get("tag") or "").startswith(TAG_PREFIX)]

    async def leader(self) -> str | None:
        """The instance holding the feed lease now."""
        return (await read_leadership(self.redis, self.settings(), SystemClock())).leader
