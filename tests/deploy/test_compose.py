"""docker-compose.yml as the guide's users need it. No Docker engine or compose v2 plugin can be installed
on CI (Debian ships only compose v1, which predates this file's spec), so the structure is checked here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
GUARD = ("feed", "monitor", "api", "alerts")


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def test_every_service_restarts_checks_its_health_and_waits_for_redis() -> None:
    services = compose()["services"]
    for name in (*GUARD, "sim"):
        svc = services[name]
        assert svc["restart"] == "unless-stopped"
        assert svc["command"] == ["python", "-m", f"services.{name}"]
        assert svc["healthcheck"]["test"] == ["CMD", "python", "-m", f"services.{name}", "--check"]
        assert svc["container_name"] == f"upstox_{name}"
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        assert {"path": ".env", "required": False} in svc["env_file"]


def test_redis_persists_with_aof_on_a_named_volume() -> None:
    doc = compose()
    redis = doc["services"]["redis"]
    assert "--appendonly" in redis["command"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert redis["command"][redis["command"].index("--appendfsync") + 1] == "everysec"
    volume = redis["volumes"][0].split(":")[0]
    assert volume in doc["volumes"]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_the_api_is_published_on_loopback_only_and_the_sim_is_a_profile() -> None:
    services = compose()["services"]
    assert services["api"]["ports"] == ["127.0.0.1:8000:8000"]
    assert services["sim"]["profiles"] == ["sim"]
    for name in GUARD:
        assert services[name]["depends_on"]["sim"] == {"condition": "service_healthy", "required": False}
        assert "ports" not in services[name] or name == "api"


def test_the_dockerfile_runs_the_services_as_a_non_root_user() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "USER guard" in dockerfile
    assert "pip install --no-cache-dir '.[sim]'" in dockerfile  # the image runs the simulator too
