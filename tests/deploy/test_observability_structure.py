"""Prometheus, Grafana and OpenTelemetry files checked against the compose stack and the services' code."""

from __future__ import annotations

import importlib
import json
import re
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from deploy.localstack import REPO

COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = sorted(p.parent.name for p in (REPO / "services").glob("*/Dockerfile"))
PROMETHEUS: dict[str, Any] = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
DASHBOARD: dict[str, Any] = json.loads((REPO / "deploy" / "grafana" / "dashboards" / "tributary.json").read_text())
PROMQL_WORDS = {"sum", "max", "min", "avg", "by", "rate", "increase", "histogram_quantile", "time", "bool", "on",
                "group_left", "up", "le", "count", "without", "delta"}


def _mounts(service: str) -> dict[str, str]:
    """Container path -> host path of the bind mounts of a compose service."""
    out = {}
    for volume in COMPOSE["services"][service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            out[target] = source
    return out


def test_the_stack_has_postgres_registry_and_observability() -> None:
    services = COMPOSE["services"]
    wanted = {"postgres", "registry", "prometheus", "grafana", "otel-collector", "triton", "redis", "kafka"}
    assert wanted <= set(services)
    assert services["otel-collector"]["image"].startswith("otel/opentelemetry-collector-contrib:")
    url = services["registry"]["environment"]["REGISTRY_DATABASE_URL"]
    assert url.startswith("postgresql://") and "@postgres:5432/" in url and "${POSTGRES_PASSWORD:?" in url
    assert services["registry"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "model-repository:/models" in services["registry"]["volumes"]
    assert services["registry"]["environment"]["REGISTRY_TRITON_REPOSITORY"] == "/models"
    for name, spec in services.items():
        for source in _mounts(name).values():
            assert (REPO / source).exists(), f"{name} mounts {source}, which does not exist"
        assert "healthcheck" in spec or "build" in spec or name == "otel-collector", f"{name} has no healthcheck"


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_exports_traces_to_the_collector_and_is_scraped(name: str) -> None:
    spec = COMPOSE["services"][name]
    prefix = name.upper()
    assert "otlp_endpoint" in importlib.import_module(f"{name}.settings").Settings.model_fields
    assert spec["environment"][f"{prefix}_OTLP_ENDPOINT"].endswith("http://otel-collector:4318/v1/traces}")
    assert spec["depends_on"]["kafka"]["condition"] == "service_healthy"
    port = importlib.import_module(f"{name}.settings").Settings.model_fields["port"].default
    jobs = {j["job_name"]: j for j in PROMETHEUS["scrape_configs"]}
    assert jobs[name]["static_configs"][0]["targets"] == [f"{name}:{port}"]


def test_prometheus_and_grafana_are_wired_to_their_files() -> None:
    for job in PROMETHEUS["scrape_configs"]:
        host = job["static_configs"][0]["targets"][0].split(":")[0]
        assert host in COMPOSE["services"], f"job {job['job_name']} scrapes {host}, not a compose service"
    prometheus_mounts = _mounts("prometheus")
    for rule_file in PROMETHEUS["rule_files"]:
        assert rule_file in prometheus_mounts
    assert prometheus_mounts["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus/prometheus.yml"

    grafana_mounts = _mounts("grafana")
    provisioning = REPO / grafana_mounts["/etc/grafana/provisioning"]
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and datasource["uid"] == "prometheus"
    provider = yaml.safe_load((provisioning / "dashboards" / "tributary.yaml").read_text())["providers"][0]
    assert provider["options"]["path"] in grafana_mounts
    assert (REPO / grafana_mounts[provider["options"]["path"]] / "tributary.json").is_file()

    collector = yaml.safe_load((REPO / "deploy" / "otel" / "collector.yaml").read_text())
    assert collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    assert "otlp" in collector["service"]["pipelines"]["traces"]["receivers"]
    assert _mounts("otel-collector")["/etc/otelcol/collector.yaml"] == "./deploy/otel/collector.yaml"


def _panels() -> list[dict[str, Any]]:
    out = []
    for panel in DASHBOARD["panels"]:
        out += [panel, *panel.get("panels", [])]
    return [p for p in out if p.get("type") != "row"]


def test_every_dashboard_query_names_metrics_the_services_define() -> None:
    for name in SERVICES:
        importlib.import_module(f"{name}.metrics")
    importlib.import_module("tributary_kit.lag")
    names_of = REGISTRY._collector_to_names
    defined = {sample for collector in list(names_of) for sample in names_of[collector]}
    assert {p["title"] for p in _panels()} >= {
        "Ingest rate", "Ingest errors", "Consumer lag per group", "Drift score per feature", "Model versions by alias",
        "Traffic split", "Latency p50 per version and route", "Latency p99 per version and route",
        "Shadow and canary divergence", "Retrain timeline", "Drift-to-recovery time (last recovery) vs objective"}
    for panel in _panels():
        assert panel["datasource"]["uid"] == "prometheus"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = re.sub(r'\{[^}]*\}|"[^"]*"|\[[^]]*\]', "", target["expr"])
            names = set(re.findall(r"[a-z_][a-z0-9_]*", expr)) - PROMQL_WORDS
            names -= {label for label in re.findall(r"(?:by|on) \(([^)]*)\)", target["expr"]) for label in
                      re.split(r",\s*", label)}
            unknown = {n for n in names if n not in defined}
            assert not unknown, f"{panel['title']}: {target['expr']} names metrics no service defines: {unknown}"
