"""The api as a real process (`python -m services.api`) closing through the simulator's REST broker."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from libs.common.settings import Settings
from services.sim.server import running_simulator
from tests.helpers import ChildPlace, eventually, free_port, sealed_child

pytestmark = pytest.mark.e2e


def _place(settings: Settings, cwd: Path, **extra: str) -> ChildPlace:
    return sealed_child(cwd, REDIS_URL=settings.redis_url, LOG_LEVEL="INFO", **extra)


@contextmanager
def api_process(place: ChildPlace) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.api"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **place
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout:
            proc.stdout.close()


async def test_emergency_close_end_to_end_through_the_simulator(
    settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    sim_settings = settings.model_copy(update={"sim_port": free_port()})
    async with running_simulator(sim_settings, rest_port=sim_settings.sim_port) as sim:
        sim.market.set_price("BOSCHLTD", 57500)
        port = free_port()
        place = _place(
            settings, tmp_path, API_PORT=str(port), SIM_HOST="127.0.0.1", SIM_PORT=str(sim_settings.sim_port)
        )
        with api_process(place) as proc:
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:

                async def up() -> bool:
                    assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                    try:
                        return (await http.get("/api/v1/monitoring/status")).status_code == 200
                    except httpx.TransportError:
                        return False

                await eventually(up, timeout_s=20, interval_s=0.1)
                status = (await http.get("/api/v1/monitoring/status")).json()
                assert status["market"] == "simulator"
                assert status["token"]["valid"] is True
                assert status["services"]["api"]["alive"] is True

                body = {"symbol": "BOSCHLTD", "side": "long", "quantity": 10, "entry_price": 735, "stop_loss": 698.25}
                refused = await http.post("/api/v1/positions", json=body)  # the broker holds nothing yet
                assert refused.status_code == 409, refused.text
                assert "the broker holds nothing (flat) in product I of BOSCHLTD" in refused.json()["detail"]
                sim_base = f"http://127.0.0.1:{sim_settings.sim_port}"
                entry = {"symbol": "BOSCHLTD", "side": "buy", "quantity": 10}  # the bot's entry
                assert (await http.post(f"{sim_base}/sim/trade", json=entry)).status_code == 200
                assert (await http.post("/api/v1/positions", json=body)).status_code == 201
                resp = await http.post(
                    "/api/v1/monitoring/emergency-close-position", json={"symbol": "BOSCHLTD", "reason": "emergency"}
                )
                assert resp.status_code == 200, resp.text
                closed = resp.json()
                assert closed["message"] == "Position BOSCHLTD closed successfully"
                assert closed["price_source"] == "broker"  # no feed running: nothing cached
                assert closed["exit_price"] == pytest.approx(575.0, abs=5)
                assert closed["pnl"] == pytest.approx((closed["exit_price"] - 735) * 10)
                orders = (await http.get(f"{sim_base}/sim/orders")).json()
                assert [(o["transaction_type"], o["quantity"], bool(o["tag"])) for o in orders] == [
                    ("BUY", 10, False),  # the entry
                    ("SELL", 10, True),  # the guard's close
                ]

            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 10)
            output = proc.stdout.read() if proc.stdout else ""
            assert proc.returncode == 0, output
            assert "Position BOSCHLTD closed successfully" in output
            assert sim.token not in output


def test_beyond_loopback_without_api_key_exits_2_with_one_line(settings: Settings, tmp_path: Path) -> None:
    place = _place(settings, tmp_path, API_HOST="0.0.0.0", API_PORT=str(free_port()))
    done = subprocess.run(
        [sys.executable, "-m", "services.api"], capture_output=True, text=True, timeout=30, check=False, **place
    )
    assert done.returncode == 2
    errors = [line for line in done.stdout.splitlines() + done.stderr.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1
    assert "API_KEY must be set when API_HOST is '0.0.0.0'" in errors[0]


def test_check_fails_without_a_heartbeat(settings: Settings, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "services.api", "--check"]
    done = subprocess.run(command, capture_output=True, timeout=30, check=False, **_place(settings, tmp_path))
    assert done.returncode == 1
