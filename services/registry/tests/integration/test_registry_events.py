"""Registry events on the real Kafka broker: published through the outbox, never lost.

Events are read back with a separate confluent-kafka consumer.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from registry.app import create_app
from registry.domain import Principal, Role
from registry.service import RegistryService
from registry.settings import Settings
from schemas.envelope import Envelope
from schemas.registry import ModelRegisteredV1, RolloutChangedV1

from services.registry.tests.conftest import FakeTritonControl

pytestmark = pytest.mark.integration

Consume = Callable[[str, int], list[tuple[str, bytes]]]
Offline = Callable[[Settings], tuple[RegistryService, Callable[[], None]]]


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_registration_and_alias_changes_are_published(
    settings: Settings, tokens: dict[str, str], consume: Consume, wait_for: Callable[..., None],
    make_onnx: Callable[..., bytes], spec_json: Callable[..., str],
) -> None:
    with TestClient(create_app(settings)) as client:
        for seed in range(2):
            response = client.post("/v1/models/fraud/versions", headers=_auth(tokens["both"]),
                                   files={"artifact": ("m.onnx", make_onnx(seed=seed), "application/octet-stream")},
                                   data={"metadata": spec_json()})
            assert response.status_code == 201, response.text
        sha2 = response.json()["sha256"]
        op = _auth(tokens["both"])
        client.put("/v1/models/fraud/aliases/champion", headers=op, json={"version": 1, "reason": "first"})
        client.put("/v1/models/fraud/aliases/canary", headers=op, json={"version": 2, "weight": 0.1, "reason": "try"})
        client.post("/v1/models/fraud/aliases/canary/rollback", headers=op, json={"to_version": 1, "reason": "bad"})
        store = client.app.state.service.store  # type: ignore[attr-defined]
        wait_for(lambda: store.outbox_backlog() == 0, what="the outbox to drain")

    registered = consume(settings.model_registered_topic, 2)
    assert [key for key, _ in registered] == ["fraud", "fraud"]
    events = [Envelope[ModelRegisteredV1].model_validate_json(value) for _, value in registered]
    assert [e.payload.version for e in events] == [1, 2]
    assert events[1].payload.sha256 == sha2
    assert events[0].event_type == "registry.model-registered.v1" and events[0].source == "registry"
    assert events[0].payload.created_by == "admin" and events[0].payload.metrics["auc"] == 0.91
    assert events[0].payload.training_window is not None and events[0].payload.has_reference_stats

    changed = consume(settings.rollout_changed_topic, 3)
    assert [key for key, _ in changed] == ["fraud/champion", "fraud/canary", "fraud/canary"]
    rollouts = [Envelope[RolloutChangedV1].model_validate_json(value).payload for _, value in changed]
    assert [(r.alias, r.version, r.previous_version, r.weight) for r in rollouts] == [
        ("champion", 1, None, None), ("canary", 2, None, 0.1), ("canary", 1, 2, 0.1)
    ]
    assert rollouts[2].reason == "rollback: bad" and rollouts[2].changed_by == "admin"
    ids = [json.loads(v)["event_id"] for _, v in registered + changed]
    assert len(set(ids)) == len(ids)


def test_events_committed_while_no_publisher_runs_are_published_at_next_start(
    settings: Settings, consume: Consume, offline: Offline, wait_for: Callable[..., None],
    make_onnx: Callable[..., bytes], make_spec: Callable[..., object],
) -> None:
    # A process that committed and died before publishing: the core alone, no drainer.
    service, close = offline(settings)
    actor = Principal(name="trainer-ci", roles=frozenset({Role.TRAINER, Role.OPERATOR}))
    try:
        service.register_version(name="churn", spec=make_spec(), artifact=[make_onnx()], actor=actor)  # type: ignore[arg-type]
        service.set_alias(name="churn", alias="champion", version=1, weight=None, reason="r", actor=actor)
        assert service.store.outbox_backlog() == 2
    finally:
        close()

    with TestClient(create_app(settings)) as client:
        store = client.app.state.service.store  # type: ignore[attr-defined]
        wait_for(lambda: store.outbox_backlog() == 0, what="the outbox to drain at start-up")
    assert len(consume(settings.model_registered_topic, 1)) == 1
    [(key, value)] = consume(settings.rollout_changed_topic, 1)
    assert key == "churn/champion"
    assert Envelope[RolloutChangedV1].model_validate_json(value).payload.version == 1

    # Published records are marked: a restart publishes nothing again.
    with TestClient(create_app(settings)) as client:
        assert client.app.state.service.store.pending_messages(10) == []  # type: ignore[attr-defined]


def test_alias_changes_load_and_unload_models_in_triton(
    settings: Settings, tokens: dict[str, str], fake_triton: FakeTritonControl, make_onnx: Callable[..., bytes],
    spec_json: Callable[..., str],
) -> None:
    settings = settings.model_copy(update={"triton_url": fake_triton.url})
    with TestClient(create_app(settings)) as client:
        client.post("/v1/models/fraud/versions", headers=_auth(tokens["trainer"]),
                    files={"artifact": ("m.onnx", make_onnx(), "application/octet-stream")},
                    data={"metadata": spec_json()})
        assert fake_triton.paths == []  # registering does not change what serves
        op = _auth(tokens["operator"])
        client.put("/v1/models/fraud/aliases/champion", headers=op, json={"version": 1, "reason": "r"})
        assert fake_triton.paths == ["/v2/repository/models/fraud/load"]
        config = (settings.triton_root / "fraud" / "config.pbtxt").read_text()
        assert "versions: [1]" in config
        assert (settings.triton_root / "fraud" / "1" / "model.onnx").read_bytes() == make_onnx()
        client.delete("/v1/models/fraud/aliases/champion", headers=op, params={"reason": "retire"})
        assert fake_triton.paths[-1] == "/v2/repository/models/fraud/unload"
        assert client.post("/v1/models/fraud/triton/sync", headers=op).status_code == 204
        assert fake_triton.paths[-1] == "/v2/repository/models/fraud/unload"


def test_a_failing_triton_does_not_undo_the_alias_change(
    settings: Settings, tokens: dict[str, str], fake_triton: FakeTritonControl, make_onnx: Callable[..., bytes],
    spec_json: Callable[..., str],
) -> None:
    settings = settings.model_copy(update={"triton_url": fake_triton.url})
    fake_triton.status = 500
    with TestClient(create_app(settings)) as client:
        client.post("/v1/models/fraud/versions", headers=_auth(tokens["both"]),
                    files={"artifact": ("m.onnx", make_onnx(), "application/octet-stream")},
                    data={"metadata": spec_json()})
        op = _auth(tokens["both"])
        moved = client.put("/v1/models/fraud/aliases/champion", headers=op, json={"version": 1, "reason": "r"})
        assert moved.status_code == 200  # the registry is the source of truth; Triton is repaired later
        assert client.get("/v1/models/fraud/aliases/champion").json()["version"] == 1
        assert "registry_triton_sync_failures_total" in client.get("/metrics").text
        retry = client.post("/v1/models/fraud/triton/sync", headers=op)
        assert retry.status_code == 502 and retry.json()["code"] == "triton_error"
        fake_triton.status = 200
        assert client.post("/v1/models/fraud/triton/sync", headers=op).status_code == 204
