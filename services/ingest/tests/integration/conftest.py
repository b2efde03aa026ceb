"""Ingest apps against the real broker, and helpers to read what they published."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from ingest.app import create_app
from ingest.settings import Settings


def spec_body(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": "credit default",
        "features": [
            {"name": "age", "type": "numeric", "min": 18, "max": 120},
            {"name": "income", "type": "numeric", "nullable": True},
            {"name": "region", "type": "categorical", "categories": ["north", "south"]},
        ],
        "label": {"type": "binary"},
        "entity": "customer",
    }


def make_event(dataset: str, /, **changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": f"e-{uuid.uuid4()}",
        "dataset": dataset,
        "entity_id": f"c-{uuid.uuid4().hex[:8]}",
        "event_time": datetime.now(UTC).isoformat(),
        "features": {"age": 42, "income": 5100.25, "region": "south"},
    }
    features = changes.pop("features", None)
    if features is not None:
        event["features"] = {**event["features"], **features}
    event.update(changes)
    return event


@pytest.fixture
def settings(kafka_bootstrap: str, unique: str) -> Settings:
    return Settings(kafka_bootstrap=kafka_bootstrap, raw_group_id=f"ingest-raw-{unique}", log_json=False,
                    startup_timeout_s=60)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def dataset(client: TestClient, unique: str) -> str:
    name = f"credit-{unique}"
    response = client.post("/v1/datasets", json=spec_body(name))
    assert response.status_code == 201, response.text
    return name


def value(msg: Any) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(msg.value())
    return decoded
