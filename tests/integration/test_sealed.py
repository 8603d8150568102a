"""The suite is sealed from the developer: their exports, their `.env` and their running Redis change nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from redis import Redis as SyncRedis

from libs.common.settings import Settings, load_settings
from tests.helpers import REPO_ROOT, RedisServer, redis_server, sealed_child

# What a developer's shell holds after the README's Example 2 and a Compose `make up` (its `.env`).
DEVELOPER = {
    "PRICE_STALE_AFTER_S": "10",
    "PRICE_CACHE_TTL_S": "40",
    "API_KEY": "compose-api-key",
    "UPSTOX_ACCESS_TOKEN": "a-real-looking-upstox-token",
    "BROKER": "paper",
    "LOG_DIR": "/nonexistent/logs",
}


def test_settings_never_read_a_dotenv_during_the_tests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in DEVELOPER.items()))
    monkeypatch.chdir(tmp_path)
    for settings in (Settings(), load_settings()):
        assert settings.price_cache_ttl_s == 300
        assert settings.price_stale_after_s == 30.0
        assert settings.simulator_mode


def test_a_child_gets_the_allow_list_and_the_given_settings_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in DEVELOPER.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SOME_TOOL_TOKEN", "x")
    place = sealed_child(tmp_path, REDIS_URL="redis://127.0.0.1:1/0")
    assert place["cwd"] == str(tmp_path.resolve())
    assert place["env"]["REDIS_URL"] == "redis://127.0.0.1:1/0"
    assert "PATH" in place["env"]
    assert not set(place["env"]) & {*DEVELOPER, "SOME_TOOL_TOKEN"}
    with pytest.raises(ValueError, match="inside the checkout"):
        sealed_child(REPO_ROOT)
    (tmp_path / ".env").write_text("API_KEY=x\n")
    with pytest.raises(ValueError, match=r"holds a \.env"):
        sealed_child(tmp_path)


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_tests_run_in_a_developers_shell_pass_and_touch_nothing_of_theirs(tmp_path: Path) -> None:
    """The README's exports, a `.env` and a running Redis on REDIS_URL: settings-sensitive tests and the ones
    that start service processes still pass, and the developer's Redis receives not one connection."""
    with redis_server() as theirs, SyncRedis(port=theirs.port, decode_responses=True) as client:
        client.hset("position:BOSCHLTD", mapping={"state": "open", "quantity": "39"})
        before = client.info("stats")["total_connections_received"]
        place = sealed_child(tmp_path, **DEVELOPER, REDIS_URL=theirs.url, PYTHONDONTWRITEBYTECODE="1")
        (tmp_path / ".env").write_text(f"REDIS_URL={theirs.url}\nAPI_KEY=compose-api-key\n")  # a Compose .env
        inner = [
            "tests/unit/test_settings.py",
            "tests/api/test_process.py",
            "tests/monitor/test_monitor_e2e.py",
            "tests/feed/test_feed_sim.py::test_price_ttl_follows_the_setting",
        ]
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
             *(str(REPO_ROOT / t) for t in inner)],
            capture_output=True, text=True, timeout=170, check=False, **place,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
        assert client.info("stats")["total_connections_received"] == before
        assert client.keys("*") == ["position:BOSCHLTD"]
        assert client.hgetall("position:BOSCHLTD") == {"state": "open", "quantity": "39"}


@pytest.mark.integration
def test_the_private_redis_refuses_a_server_that_is_not_its_own_child(tmp_path: Path) -> None:
    """A redis-server already on the port (say, the developer's): never adopted, and left running untouched."""
    with redis_server() as theirs, SyncRedis(port=theirs.port) as client:
        client.set("their:key", "1")
        ours = RedisServer(theirs.port, str(tmp_path))
        with pytest.raises(RuntimeError, match=f"port {theirs.port}"):
            ours.start()
        assert ours.proc is None or ours.proc.poll() is not None
        assert client.get("their:key") == b"1"
