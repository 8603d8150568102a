"""The shipped Prometheus config, alert rules and Grafana provisioning: checked with promtool (the Debian
`prometheus` package) and against docker-compose.yml, so `docker compose --profile observability up` works
with no clicks."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary is not None, "promtool is not installed (bash .ci/run installs the prometheus package)"
    return subprocess.run([binary, *args], cwd=DEPLOY, capture_output=True, text=True, check=False, timeout=60)


@pytest.mark.parametrize(
    "args",
    [
        ("check", "config", "prometheus.yml"),
        ("check", "rules", "alerts.rules.yml"),
        ("test", "rules", "alerts.tests.yml"),
    ],
)
def test_promtool_accepts_the_config_and_the_rules_behave(args: tuple[str, ...]) -> None:
    result = promtool(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_the_alerts_cover_the_outage_layers() -> None:
    rules = yaml.safe_load((DEPLOY / "alerts.rules.yml").read_text())["groups"][0]["rules"]
    names = {rule["alert"] for rule in rules}
    assert {"GuardFeedDown", "GuardStalePositions", "GuardLayer3", "GuardCloseFailures"} <= names
    tested = (DEPLOY / "alerts.tests.yml").read_text()
    assert all(f"alertname: {name}" in tested for name in names)  # every alert has a promtool test


def test_prometheus_scrapes_every_service_on_its_port() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    expected = {"feed": ["feed:9101"], "monitor": ["monitor:9102"], "alerts": ["alerts:9103"], "api": ["api:8000"]}
    assert targets == expected


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def test_compose_runs_prometheus_and_grafana_provisioned_under_a_profile() -> None:
    services = _compose()["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["profiles"] == grafana["profiles"] == ["observability"]
    assert prometheus["ports"] == ["127.0.0.1:9090:9090"] and grafana["ports"] == ["127.0.0.1:3000:3000"]
    for volume in prometheus["volumes"] + grafana["volumes"]:
        source = volume.split(":")[0]
        if source.startswith("./"):
            assert (ROOT / source).exists(), source
    mounted = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    assert mounted["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus.yml"
    assert mounted["/etc/prometheus/alerts.rules.yml"] == "./deploy/alerts.rules.yml"  # rule_files is relative
    for name in ("feed", "monitor", "alerts", "api"):  # the exporters listen on the compose network, unpublished
        assert services[name]["environment"]["METRICS_HOST"] == "0.0.0.0"
    assert all("ports" not in services[name] for name in ("feed", "monitor", "alerts"))
    assert json.loads(services["api"]["environment"]["API_ALLOWED_HOSTS"]) == ["api"]  # the Host Prometheus sends


def test_grafana_provisioning_points_at_the_dashboard_and_the_datasource() -> None:
    grafana = _compose()["services"]["grafana"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/guard.yml").read_text())["providers"][0]
    dashboards_dir = provider["options"]["path"]
    assert mounted[dashboards_dir] == "./deploy/grafana/dashboards"
    assert mounted["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    [source] = datasource["datasources"]
    assert source["url"] == "http://prometheus:9090"
    dashboard = json.loads((DEPLOY / "grafana/dashboards/guard.json").read_text())
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == f"{dashboards_dir}/guard.json"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
