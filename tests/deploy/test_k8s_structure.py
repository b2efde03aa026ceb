"""deploy/k8s/ checked against the code it runs: every service, port, probe, variable and volume exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from fastapi.routing import APIRoute

from deploy.localstack import REPO

K8S = REPO / "deploy" / "k8s"
COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = sorted(p.parent.name for p in (REPO / "services").glob("*/Dockerfile"))


def _documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


DOCS = _documents()


def _find(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found in deploy/k8s"
    return found[0]


def _container(name: str) -> dict[str, Any]:
    containers = _find("Deployment", name)["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


def _settings(name: str, **required: Any) -> Any:
    return importlib.import_module(f"{name}.settings").Settings


def _routes(name: str) -> set[str]:
    """Paths the service's app serves, from ``create_app(Settings(...))`` (built, not started)."""
    settings_cls = _settings(name)
    required = {"registry_token": "t", "triton_grpc_url": "127.0.0.1:1", "redis_url": "redis://127.0.0.1:1/0"}
    fields = settings_cls.model_fields
    app = importlib.import_module(f"{name}.app").create_app(
        settings_cls(**{k: v for k, v in required.items() if k in fields}))
    return _paths(app.routes, "")


def _paths(routes: list[Any], prefix: str) -> set[str]:
    """Every path of ``routes``, descending into included routers (FastAPI keeps them nested)."""
    found: set[str] = set()
    for route in routes:
        nested = getattr(route, "original_router", None)
        if nested is not None:
            found |= _paths(nested.routes, prefix + route.include_context.prefix)
        elif isinstance(route, APIRoute) or hasattr(route, "path"):
            found.add(prefix + route.path)
    return found


def test_every_manifest_parses_and_lives_in_the_namespace() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk, f"kustomization.yaml lists {sorted(listed)}, deploy/k8s holds {sorted(on_disk)}"
    for generated in kustomization["configMapGenerator"]:
        for entry in generated["files"]:
            assert (K8S / entry.split("=", 1)[1]).is_file(), entry
    for doc in DOCS:
        assert doc["apiVersion"] and doc["kind"], doc
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "tributary", doc["metadata"]


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_has_a_deployment_that_matches_its_code(name: str) -> None:
    container = _container(name)
    compose = COMPOSE["services"][name]
    assert container["image"] == compose["image"].replace("${TRIBUTARY_VERSION:-latest}", "latest")

    settings_cls = _settings(name)
    http = next(p for p in container["ports"] if p["name"] == "http")
    dockerfile = (REPO / "services" / name / "Dockerfile").read_text()
    exposed = re.search(r"^EXPOSE (\d+)", dockerfile, flags=re.M)
    assert exposed and http["containerPort"] == int(exposed.group(1)) == settings_cls.model_fields["port"].default
    if "grpc_port" in settings_cls.model_fields:
        grpc = next(p for p in container["ports"] if p["name"] == "grpc")
        assert grpc["containerPort"] == settings_cls.model_fields["grpc_port"].default

    routes = _routes(name)
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if probe in container:
            path = container[probe]["httpGet"]["path"]
            assert path in routes, f"{name} {probe} {path} is not a route of the app ({sorted(routes)})"
            assert container[probe]["httpGet"]["port"] in {"http", http["containerPort"]}
    assert container["readinessProbe"]["httpGet"]["path"] != container["livenessProbe"]["httpGet"]["path"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) <= set(container["resources"]["limits"])

    prefix = f"{name.upper()}_"
    names = [e["name"] for e in container.get("env", [])]
    for source in container.get("envFrom", []):
        names += list(_find("ConfigMap", source["configMapRef"]["name"])["data"])
    assert names, f"{name} gets no configuration"
    for var in names:
        assert var.startswith(prefix) and var.removeprefix(prefix).lower() in settings_cls.model_fields, \
            f"{var} is not a setting of {name}"
    required = {f for f, info in settings_cls.model_fields.items() if info.is_required()}
    assert {f"{prefix}{f.upper()}" for f in required} <= set(names), f"{name} misses a required setting"
    for var in container.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == "tributary-secrets"

    pod = _find("Deployment", name)["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(http["containerPort"])
    assert "/metrics" in routes
    service = _find("Service", name)
    assert {p["port"] for p in service["spec"]["ports"]} == {p["containerPort"] for p in container["ports"]}
    assert service["spec"]["selector"] == _find("Deployment", name)["spec"]["selector"]["matchLabels"]


def test_volumes_are_declared_and_claims_exist() -> None:
    claims = {d["metadata"]["name"] for d in DOCS if d["kind"] == "PersistentVolumeClaim"}
    for doc in DOCS:
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        spec = doc["spec"]["template"]["spec"]
        declared = {v["name"] for v in spec.get("volumes", [])}
        declared |= {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
        for container in spec["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in declared, f"{doc['metadata']['name']}: volume {mount['name']} not declared"
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
            if "configMap" in volume:
                generated = {g["name"] for g in yaml.safe_load((K8S / "kustomization.yaml").read_text())
                             ["configMapGenerator"]}
                named = {d["metadata"]["name"] for d in DOCS if d["kind"] == "ConfigMap"}
                assert volume["configMap"]["name"] in generated | named


def test_the_model_repository_is_shared_by_the_registry_triton_and_the_gateway() -> None:
    assert _find("PersistentVolumeClaim", "model-repository")["spec"]["accessModes"] == ["ReadWriteMany"]
    registry = _settings("registry")
    mounts = {m["name"]: m for m in _container("registry")["volumeMounts"]}
    repo_path = _find("ConfigMap", "registry-config")["data"]["REGISTRY_TRITON_REPOSITORY"]
    assert mounts["model-repository"]["mountPath"] == repo_path and not mounts["model-repository"]["readOnly"]
    assert "triton_repository" in registry.model_fields
    triton = _find("Deployment", "triton")["spec"]["template"]["spec"]["containers"][0]
    assert {m["name"]: m["readOnly"] for m in triton["volumeMounts"]} == {"model-repository": True}
    assert "--model-repository=/models" in triton["args"]
    assert triton["resources"]["limits"]["nvidia.com/gpu"] >= 1
    gateway = _find("ConfigMap", "inference-config")["data"]
    assert gateway["INFERENCE_MODEL_REPOSITORY"] == "/models"
    assert gateway["INFERENCE_TRITON_GRPC_URL"] == "triton:8001"


def test_dependencies_and_addresses_resolve_to_services() -> None:
    services = {d["metadata"]["name"]: {p["port"] for p in d["spec"]["ports"]} for d in DOCS if d["kind"] == "Service"}
    for kind in ("StatefulSet",):
        for doc in (d for d in DOCS if d["kind"] == kind):
            assert doc["metadata"]["name"] in services
    addresses = re.compile(r"^(?:\w+://)?(?:[\w.]+:[^@]*@)?([a-z][a-z0-9-]*):(\d+)")
    for doc in (d for d in DOCS if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config")):
        for key, value in doc.get("data", {}).items():
            match = addresses.match(str(value))
            if match and not key.endswith(("_DIR", "_REPOSITORY")):
                host, port = match.group(1), int(match.group(2))
                assert host in services and port in services[host], f"{key}={value}: no Service {host}:{port}"


def test_prometheus_scrapes_annotated_pods_and_loads_the_rules() -> None:
    config = yaml.safe_load(_find("ConfigMap", "prometheus-config")["data"]["prometheus.yml"])
    job = config["scrape_configs"][0]
    assert job["kubernetes_sd_configs"][0]["role"] == "pod"
    assert any(r.get("source_labels") == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]
               for r in job["relabel_configs"])
    mounts = {m["mountPath"] for m in _container("prometheus")["volumeMounts"]}
    assert str(Path(config["rule_files"][0]).parent) in mounts


K8S_VERSION = "1.31"
"""The Kubernetes release the manifests are validated against (its OpenAPI schemas, strict)."""


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_manifest_is_valid_kubernetes(doc: dict[str, Any]) -> None:
    """What ``kubectl apply --dry-run=server --validate=strict`` would check of each object's shape."""
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} is not valid for Kubernetes {K8S_VERSION}: "
                    f"{'.'.join(str(p) for p in exc.path)}: {exc.message}")


def test_the_validator_refuses_a_broken_manifest() -> None:
    """The check above can fail: a misspelt field and a wrongly typed one are refused."""
    deployment = next(d for d in DOCS if d["kind"] == "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replicas": "two", "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
