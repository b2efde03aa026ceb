"""docker-compose.yml and the Dockerfiles, checked against the code they run (no Docker engine needed)."""

from __future__ import annotations

import importlib
import re
from typing import Any

import pytest
import yaml

from deploy.localstack import REPO

COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES_DIR = REPO / "services"
BUILT = {name: spec for name, spec in COMPOSE["services"].items() if "build" in spec}


def test_every_service_with_a_dockerfile_is_in_compose() -> None:
    with_dockerfile = {p.parent.name for p in SERVICES_DIR.glob("*/Dockerfile")}
    assert with_dockerfile, "no service Dockerfile found"
    assert with_dockerfile <= set(BUILT), f"missing from docker-compose.yml: {with_dockerfile - set(BUILT)}"


@pytest.mark.parametrize("name", sorted(BUILT))
def test_service_image_settings_and_ports_match_the_code(name: str) -> None:
    spec = BUILT[name]
    dockerfile = REPO / spec["build"]["dockerfile"]
    assert dockerfile.is_file()
    text = dockerfile.read_text()
    # Lean images: the service, the contracts and the kit, nothing of another service.
    copied = set(re.findall(r"^COPY (?!--from)(\S+) ", text, flags=re.M))
    assert copied == {"schemas", "kit", f"services/{name}"}, copied
    module = re.search(r'CMD \["python", "-m", "(\w+)"\]', text)
    assert module and module.group(1) == name
    assert (SERVICES_DIR / name / "src" / name / "__main__.py").is_file()

    settings = importlib.import_module(f"{name}.settings").Settings
    prefix = f"{name.upper()}_"
    env = {**spec.get("environment", {})}
    for key in env:
        if key.startswith(prefix):
            assert key.removeprefix(prefix).lower() in settings.model_fields, f"{key} is not a setting of {name}"
    exposed = re.search(r"^EXPOSE (\d+)", text, flags=re.M)
    assert exposed
    port = int(exposed.group(1))
    assert re.search(rf"{prefix}PORT={port}\b", text), "the image must set the port it exposes"
    assert any(str(p).endswith(f":{port}") for p in spec.get("ports", [])), spec.get("ports")
    assert f"http://127.0.0.1:{port}/readyz" in text, "healthcheck must probe the service's own readiness"
    for dependency in spec.get("depends_on", {}):
        assert dependency in COMPOSE["services"]


def test_named_volumes_are_declared() -> None:
    declared = set(COMPOSE.get("volumes", {}))
    for spec in COMPOSE["services"].values():
        for volume in spec.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"volume {source} is not declared"


def test_kafka_matches_the_local_broker_version() -> None:
    pom = (REPO / "deploy" / "kafka" / "pom.xml").read_text()
    version = re.search(r"<kafka.version>(.+)</kafka.version>", pom)
    assert version
    assert COMPOSE["services"]["kafka"]["image"] == f"apache/kafka:${{KAFKA_VERSION:-{version.group(1)}}}"
    assert COMPOSE["services"]["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
