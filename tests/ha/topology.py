"""A real Sentinel topology on loopback for tests: a master, replicas and three Sentinels on free ports.

    with sentinel_topology(tmp_path) as topo:
        settings = Settings(_env_file=None, redis_sentinels=topo.sentinels_setting)
        topo.kill_master()                       # SIGKILL
        new_port = await topo.wait_failover()    # a replica is promoted

Compressed timings (`down-after-milliseconds` 1000, `failover-timeout` 4000) so a failover takes a few seconds.
Ports are free ones, never the local recipe's 26379-26381, so tests never collide with a running `make up-ha`.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis as SyncRedis

from tests.helpers import eventually, free_port, sealed_child, terminate

MASTER = "guard"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 4000


def _redis_server() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (bash .ci/run installs it)")
    return binary


def _wait_port(port: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing answers PING on port {port}")


@dataclass
class Node:
    """One redis-server process (data node or Sentinel) with its port and working directory."""

    port: int
    workdir: Path
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "stdout.log").open("ab")
        self.proc = subprocess.Popen(
            [_redis_server(), *self.args], stdout=log, stderr=log, **sealed_child(self.workdir)
        )
        log.close()
        _wait_port(self.port)

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
            self.proc.wait()
        else:
            terminate(self.proc)
        self.proc = None

    def client(self) -> SyncRedis:
        return SyncRedis(port=self.port, socket_timeout=2, decode_responses=True)


@dataclass
class Topology:
    """Data nodes (the first is the initial master) and three Sentinels watching master `guard`."""

    root: Path
    data: list[Node] = field(default_factory=list)
    sentinels: list[Node] = field(default_factory=list)

    @property
    def sentinels_setting(self) -> str:
        """The value of `REDIS_SENTINELS` for this topology."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def master_port(self) -> int:
        """The master's port as the Sentinels report it now."""
        for node in self.sentinels:
            if node.proc is None:
                continue
            try:
                _host, port = node.client().sentinel_get_master_addr_by_name(MASTER)
                return int(port)
            except Exception:  # ask the next Sentinel
                continue
        raise RuntimeError("no Sentinel answers")

    def node(self, port: int) -> Node:
        return next(n for n in self.data if n.port == port)

    def kill_master(self) -> int:
        """SIGKILL the current master; returns its port."""
        port = self.master_port()
        self.node(port).stop(kill=True)
        return port

    async def wait_failover(self, old_port: int, timeout_s: float = 20) -> int:
        """Wait until the Sentinels name a new master that answers as master; returns its port."""

        def promoted() -> int:
            port = self.master_port()
            if port == old_port:
                return 0
            role = self.node(port).client().execute_command("ROLE")
            return port if role[0] == "master" else 0

        return await eventually(lambda: asyncio.to_thread(promoted), timeout_s=timeout_s, interval_s=0.1)

    async def wait_replicas(self, count: int, timeout_s: float = 20) -> None:
        """Wait until the master has `count` connected replicas in sync."""

        def synced() -> bool:
            info = self.node(self.master_port()).client().info("replication")
            online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
            return len([r for r in online if r.get("state") == "online"]) >= count

        await eventually(lambda: asyncio.to_thread(synced), timeout_s=timeout_s, interval_s=0.1)

    async def wait_ready(self, timeout_s: float = 20) -> None:
        """Wait until every Sentinel knows the replicas and the other Sentinels (a failover needs both)."""
        replicas = len(self.data) - 1

        def ready() -> bool:
            for node in self.sentinels:
                state = node.client().sentinel_master(MASTER)
                if state["num-slaves"] < replicas or state["num-other-sentinels"] < len(self.sentinels) - 1:
                    return False
            return True

        await eventually(lambda: asyncio.to_thread(ready), timeout_s=timeout_s, interval_s=0.1)

    def restart(self, port: int) -> None:
        """Start a stopped data node again on its port (Sentinel turns an old master into a replica)."""
        self.node(port).start()

    def stop(self) -> None:
        for node in [*self.sentinels, *self.data]:
            node.stop(kill=True)


def _data_node(root: Path, name: str, replica_of: int | None) -> Node:
    port = free_port()
    args = [
        "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--appendfsync", "always",
        "--dir", str(root / name), "--daemonize", "no", "--loglevel", "warning", "--repl-timeout", "5",
        "--repl-diskless-sync-delay", "0", "--protected-mode", "no",
    ]  # fmt: skip
    if replica_of is not None:
        args += ["--replicaof", "127.0.0.1", str(replica_of)]
    return Node(port, root / name, args)


def _sentinel(root: Path, name: str, master_port: int) -> Node:
    port = free_port()
    workdir = root / name
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "sentinel.conf"  # Sentinel rewrites its config file: it must be its own and writable
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {workdir}\nloglevel warning\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n"
        f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
        f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
        f"sentinel parallel-syncs {MASTER} 1\n",
        encoding="utf-8",
    )
    return Node(port, workdir, [str(conf), "--sentinel"])


@contextmanager
def sentinel_topology(root: Path, replicas: int = 1) -> Iterator[Topology]:
    """Start a master, `replicas` replicas and three Sentinels; stop them all on exit."""
    topo = Topology(root)
    try:
        master = _data_node(root, "redis-0", None)
        master.start()
        topo.data.append(master)
        for i in range(replicas):
            node = _data_node(root, f"redis-{i + 1}", master.port)
            node.start()
            topo.data.append(node)
        for i in range(3):
            sentinel = _sentinel(root, f"sentinel-{i}", master.port)
            sentinel.start()
            topo.sentinels.append(sentinel)
        yield topo
    finally:
        topo.stop()
