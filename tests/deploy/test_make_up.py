"""`make up` / `make down` in local mode, exactly as a user runs them on a clean checkout."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port, sealed_child

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
# Local mode even where a Docker engine answers: Compose's fixed container names would take over a developer's stack.
LOCAL = ("MODE=local",)


def _processes_under(folder: Path) -> list[str]:
    """Command lines of live processes whose working directory is inside `folder`."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if cwd.startswith(str(folder)):
            found.append(f"{pid}: {cmdline}")
    return found


def _curl(cwd: Path, *args: str) -> dict[str, object]:
    command = ["curl", "-s", "--max-time", "10", *args]
    out = subprocess.run(command, capture_output=True, text=True, check=True, **sealed_child(cwd))
    return dict(json.loads(out.stdout))


@pytest.mark.timeout(300)
def test_make_up_on_a_clean_checkout_then_make_down_leaves_nothing_behind(tmp_path: Path) -> None:
    checkout = tmp_path / "guard"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(checkout)], check=True, **sealed_child(tmp_path))
    (checkout / ".venv").symlink_to(ROOT / ".venv")  # the installed environment; the code is the clone's HEAD
    redis_port, api_port, sim_port = free_port(), free_port(), free_port()
    place = sealed_child(
        checkout,
        REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",  # nothing answers there: make up starts its own Redis
        SIM_PORT=str(sim_port),
        SIM_FEED_PORT=str(free_port()),
        API_PORT=str(api_port),
        UP_TIMEOUT_S="120",
    )
    api = f"http://127.0.0.1:{api_port}/api/v1"
    try:
        up = subprocess.run(["make", "up", *LOCAL], capture_output=True, text=True, timeout=200, **place)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "mode: local" in up.stdout
        assert "starting a local Redis" in up.stdout
        assert "every service is healthy: sim feed monitor api alerts" in up.stdout
        assert "CREDENTIALS_KEY=" in (checkout / ".env").read_text()  # a hot swap can be stored encrypted
        assert f"curl -s http://127.0.0.1:{api_port}/api/v1/monitoring/connection-health" in up.stdout

        deadline = time.monotonic() + 60
        while True:
            health = httpx.get(f"{api}/monitoring/connection-health", timeout=5).json()
            if health["websocket"]["connected"] and health["price_cache"]["cached_symbols"] >= 200:
                break
            assert time.monotonic() < deadline, health
            time.sleep(0.5)

        # the bot's entry: the broker holds the position before the guard is told about it
        trade = '{"symbol": "BOSCHLTD", "side": "buy", "quantity": 39}'
        entry = _curl(tmp_path, "-X", "POST", f"http://127.0.0.1:{sim_port}/sim/trade", "-H",
                      "Content-Type: application/json", "-d", trade)  # fmt: skip
        assert entry["position"]["quantity"] == 39
        opened = _curl(tmp_path, "-X", "POST", f"{api}/positions", "-H", "Content-Type: application/json",
                       "-d", '{"symbol": "BOSCHLTD", "side": "long", "quantity": 39, "entry_price": 735.0, '
                             '"stop_loss": 698.25}')  # fmt: skip
        assert opened["state"] == "open"
        json_body = ("-H", "Content-Type: application/json", "-d")
        closed = _curl(tmp_path, "-X", "POST", f"{api}/monitoring/emergency-close-position",
                       *json_body, '{"symbol": "BOSCHLTD", "reason": "emergency"}')  # fmt: skip
        assert closed["status"] == "success"
        assert closed["message"] == "Position BOSCHLTD closed successfully"
        assert (checkout / "logs" / "feed.log").read_text().count("[SUCCESS] WebSocket connection established!") >= 1
        assert (checkout / "data" / "appendonly.aof").exists() or (checkout / "data" / "appendonlydir").exists()

        status = subprocess.run(["make", "status", *LOCAL], capture_output=True, text=True, timeout=60, **place)
        assert "feed: healthy" in status.stdout
    finally:
        down = subprocess.run(["make", "down", *LOCAL], capture_output=True, text=True, timeout=120, **place)
    assert down.returncode == 0, down.stdout + down.stderr
    deadline = time.monotonic() + 15
    while _processes_under(checkout) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_under(checkout) == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{api}/monitoring/status", timeout=2)
