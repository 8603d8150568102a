"""deploy/ha/docker-compose.yml: the three-host topology (no Docker engine on CI: the structure is checked)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
GUARD = ("feed", "monitor", "api", "alerts")


def services() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "deploy" / "ha" / "docker-compose.yml").read_text())["services"])


def test_two_of_each_service_on_two_hosts_each_checking_its_own_instance() -> None:
    svcs = services()
    names = set()
    for service in GUARD:
        for host in (1, 2):
            svc = svcs[f"{service}-{host}"]
            assert svc["profiles"] == [f"host{host}"]
            assert svc["command"] == ["python", "-m", f"services.{service}"]
            assert svc["healthcheck"]["test"] == ["CMD", "python", "-m", f"services.{service}", "--check"]
            assert svc["network_mode"] == "host"
            assert svc["restart"] == "unless-stopped"
            env = svc["environment"]
            assert env["REDIS_SENTINEL_MASTER"] == "guard"
            assert env["REDIS_SENTINELS"].count(":26379") == 3
            names.add(env["INSTANCE_NAME"])
    assert len(names) == 8  # heartbeat:SERVICE:INSTANCE never shared by two processes


def test_a_master_a_replica_and_three_sentinels_on_three_hosts() -> None:
    svcs = services()
    assert "--replicaof" not in " ".join(svcs["redis-1"]["command"])
    assert "--replicaof ${HOST1_IP:?} 6379" in " ".join(svcs["redis-2"]["command"])
    sentinels = [svcs[f"sentinel-{i}"] for i in (1, 2, 3)]
    assert [s["profiles"] for s in sentinels] == [["host1"], ["host2"], ["host3"]]
    for sentinel in sentinels:
        script = " ".join(sentinel["command"])
        assert "sentinel monitor guard %s 6379 2" in script
        assert "--sentinel" in script
        assert sentinel["healthcheck"]["test"] == ["CMD", "redis-cli", "-p", "26379", "ping"]
    for name in ("redis-1", "redis-2"):
        script = " ".join(svcs[name]["command"])
        assert "--appendonly yes" in script
        assert "requirepass" not in script.split("/tmp/auth.conf;")[1]  # the password never on a command line
