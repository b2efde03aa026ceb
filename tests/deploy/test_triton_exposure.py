"""Triton exposure audit (reliability plan S9) over docker-compose.yml and deploy/k8s/.

Triton is reached only inside the stack, its model-control and shared-memory APIs need the admin
header (over HTTP and gRPC), the registry holds exactly that header and secret, Triton runs as
uid 1000 from an image without the 2025 CVE chain, and in Kubernetes a NetworkPolicy lets only
the gateway and the registry (and Prometheus, for metrics) reach it. The behaviour behind these
flags is tested against a real tritonserver in the registry's
``test_registry_triton_restricted.py``.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from registry.settings import Settings as RegistrySettings

from deploy.localstack import REPO
from deploy.triton import ADMIN_HEADER, RESTRICTED_APIS

COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
K8S = [d for p in sorted((REPO / "deploy" / "k8s").glob("*.yaml")) if p.name != "kustomization.yaml"
       for d in yaml.safe_load_all(p.read_text()) if d]
MIN_IMAGE = (25, 7)  # CVE-2025-23310/23311/23319 are fixed from 25.07


def _restrictions(args: list[str]) -> dict[str, str]:
    """``--http-restricted-api`` / ``--grpc-restricted-protocol`` values by flag."""
    found = {}
    for arg in args:
        match = re.fullmatch(r"--(http-restricted-api|grpc-restricted-protocol)=(.+)", arg)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def _check_restrictions(args: list[str], secret: str) -> None:
    restrictions = _restrictions(args)
    assert set(restrictions) == {"http-restricted-api", "grpc-restricted-protocol"}, args
    for flag, value in restrictions.items():
        apis, _, credential = value.partition(":")
        assert set(apis.split(",")) >= set(RESTRICTED_APIS.split(",")), f"{flag} leaves {apis!r} open"
        assert credential == f"{ADMIN_HEADER}={secret}", f"{flag}: {credential!r}"
    assert "--model-control-mode=explicit" in args


def _image_version(image: str) -> tuple[int, int]:
    match = re.search(r":(?:\$\{[A-Z_]+:-)?(\d+)\.(\d+)", image)
    assert match, f"cannot read the Triton release from {image!r}"
    return int(match.group(1)), int(match.group(2))


def _k8s(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in K8S if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_compose_triton_is_internal_restricted_and_unprivileged() -> None:
    triton = COMPOSE["services"]["triton"]
    assert "ports" not in triton, "Triton must not be published on the host"
    _check_restrictions(triton["command"], "${TRITON_ADMIN_SECRET:?Variable not set}")
    assert str(triton["user"]).split(":")[0] == "1000"
    assert _image_version(triton["image"]) >= MIN_IMAGE
    assert all(mount.endswith(":ro") for mount in triton["volumes"]), "Triton only reads the repository"


def test_compose_registry_holds_the_admin_header_and_secret() -> None:
    env = COMPOSE["services"]["registry"]["environment"]
    assert env["REGISTRY_TRITON_URL"].endswith("http://triton:8000}")
    assert env["REGISTRY_TRITON_ADMIN_HEADER"] == ADMIN_HEADER
    assert env["REGISTRY_TRITON_ADMIN_SECRET"] == "${TRITON_ADMIN_SECRET:?Variable not set}"
    assert RegistrySettings.model_fields["triton_admin_header"].default == ADMIN_HEADER
    # Nobody else gets the secret.
    holders = [name for name, spec in COMPOSE["services"].items()
               if "TRITON_ADMIN_SECRET" in str(spec.get("environment", {}))]
    assert holders == ["registry"], holders


def test_k8s_triton_is_internal_restricted_and_unprivileged() -> None:
    deployment = _k8s("Deployment", "triton")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    _check_restrictions(container["args"], "$(TRITON_ADMIN_SECRET)")
    assert pod["securityContext"]["runAsUser"] == 1000 and pod["securityContext"]["runAsNonRoot"] is True
    assert _image_version(container["image"]) >= MIN_IMAGE
    service = _k8s("Service", "triton")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert all("nodePort" not in port for port in service["spec"]["ports"])


def test_k8s_network_policy_admits_only_the_gateway_registry_and_prometheus() -> None:
    policy = _k8s("NetworkPolicy", "triton")["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "triton"}
    assert policy["policyTypes"] == ["Ingress"]
    admitted: dict[int, set[str]] = {}
    for rule in policy["ingress"]:
        sources = {peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for peer in rule["from"]}
        for port in rule["ports"]:
            admitted.setdefault(port["port"], set()).update(sources)
    assert admitted == {8000: {"inference", "registry"}, 8001: {"inference", "registry"}, 8002: {"prometheus"}}
    # The labels the policy names are the pods' own.
    for name in ("inference", "registry", "prometheus"):
        labels = _k8s("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == name


def test_k8s_registry_holds_the_admin_header_and_secret() -> None:
    config = _k8s("ConfigMap", "registry-config")["data"]
    assert config["REGISTRY_TRITON_URL"] == "http://triton:8000"
    assert config["REGISTRY_TRITON_ADMIN_HEADER"] == ADMIN_HEADER
    (container,) = _k8s("Deployment", "registry")["spec"]["template"]["spec"]["containers"]
    secret = next(e for e in container["env"] if e["name"] == "REGISTRY_TRITON_ADMIN_SECRET")
    triton_env = _k8s("Deployment", "triton")["spec"]["template"]["spec"]["containers"][0]["env"]
    triton_secret = next(e for e in triton_env if e["name"] == "TRITON_ADMIN_SECRET")
    assert secret["valueFrom"] == triton_secret["valueFrom"], "registry and Triton must share one secret"
