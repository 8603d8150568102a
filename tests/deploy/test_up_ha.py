"""`make up-ha` / `make down-ha` on a clean checkout, on free ports (never the recipe's fixed 26379-26381)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.deploy.test_make_up import ROOT, _processes_under
from tests.helpers import free_port, sealed_child

pytestmark = pytest.mark.e2e


def _wait(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():  # type: ignore[operator]
                return
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def _sentinel_master(port: int) -> int:
    out = subprocess.run(["redis-cli", "-p", str(port), "SENTINEL", "get-master-addr-by-name", "guard"],
                         capture_output=True, text=True, check=False)  # fmt: skip
    lines = out.stdout.split()
    return int(lines[-1]) if lines and lines[-1].isdigit() else 0


@pytest.mark.timeout(300)
def test_make_up_ha_runs_the_topology_follows_a_failover_and_make_down_ha_leaves_nothing(tmp_path: Path) -> None:
    checkout = tmp_path / "guard"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(checkout)], check=True, **sealed_child(tmp_path))
    (checkout / ".venv").symlink_to(ROOT / ".venv")
    redis_ports = [free_port(), free_port()]
    sentinel_ports = [free_port(), free_port(), free_port()]
    api_ports = [free_port(), free_port()]
    place = sealed_child(
        checkout,
        HA_REDIS_PORTS=" ".join(map(str, redis_ports)),
        HA_SENTINEL_PORTS=" ".join(map(str, sentinel_ports)),
        HA_API_PORTS=" ".join(map(str, api_ports)),
        SIM_PORT=str(free_port()),
        SIM_FEED_PORT=str(free_port()),
        FEED_LEASE_S="4",
        UP_TIMEOUT_S="150",
    )
    apis = [f"http://127.0.0.1:{port}/api/v1" for port in api_ports]

    def make(target: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["make", target], capture_output=True, text=True, timeout=200, **place)

    try:
        up = make("up-ha")
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"Redis master on 127.0.0.1:{redis_ports[0]}" in up.stdout
        assert "every instance is healthy" in up.stdout

        def leading() -> bool:
            health = httpx.get(f"{apis[0]}/monitoring/connection-health", timeout=5).json()
            lead = health["feed_leadership"]
            return bool(health["websocket"]["connected"] and lead["leader"] and len(lead["standbys"]) == 1)

        _wait(leading, 60, "a feed leader with one standby")
        status = httpx.get(f"{apis[1]}/monitoring/status", timeout=5).json()
        assert sorted(status["instances"]["monitor"]) == ["monitor-a", "monitor-b"]
        assert sorted(status["instances"]["api"]) == ["api-a", "api-b"]

        # Kill the master: the Sentinels promote the replica; both apis and make status-ha follow it.
        pid = int((checkout / ".run" / "ha" / f"redis-{redis_ports[0]}.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        _wait(lambda: _sentinel_master(sentinel_ports[0]) == redis_ports[1], 60, "the promotion")
        promoted_s = time.monotonic() - killed
        _wait(leading, 60, "the feed streaming again after the failover")
        print(f"\n[figure] make up-ha, master SIGKILL: replica promoted {promoted_s:.1f} s, "
              f"feed leading and connected {time.monotonic() - killed:.1f} s")  # fmt: skip
        assert f"master: 127.0.0.1 {redis_ports[1]}" in make("status-ha").stdout
        for api in apis:
            assert httpx.get(f"{api}/positions", timeout=5).status_code == 200
        status_ha = make("status-ha").stdout
        assert status_ha.count(": healthy") == 8, status_ha
    finally:
        down = make("down-ha")
    assert down.returncode == 0, down.stdout + down.stderr
    deadline = time.monotonic() + 15
    while _processes_under(checkout) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_under(checkout) == []
    assert (checkout / ".run" / "ha" / "master-port").read_text().strip() == str(redis_ports[1])
