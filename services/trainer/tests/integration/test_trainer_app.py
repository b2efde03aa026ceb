"""The whole trainer app: manual commands over HTTP, the command consumer, idempotence, dead letters."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Producer
from fastapi.testclient import TestClient
from schemas.topics import dlq
from trainer.app import create_app
from trainer.kafka import event_bytes
from trainer.service import new_command
from trainer.settings import Settings

from tests.fixtures.kafka import consume

from .conftest import Registry, wait_for

pytestmark = pytest.mark.integration


def test_commands_over_http_and_kafka_are_handled_once(
        settings: Settings, command_topic: str, registry: Registry, dataset: Callable[..., str],
        make_rows: Callable[..., list[dict[str, Any]]], unique: str) -> None:
    model = f"m-{unique}"
    name = dataset(make_rows(300, seed=71))
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json() == {"status": "ready"}
        accepted = client.post("/v1/commands", json={"model_name": model, "dataset": name,
                                                     "command_id": f"c-{unique}"})
        assert accepted.status_code == 202, accepted.text
        assert client.get(f"/v1/commands/c-{unique}").status_code in (404, 200)
        answer = wait_for(lambda: (r := client.get(f"/v1/commands/c-{unique}")).status_code == 200 and r.json(),
                          timeout_s=120, what="the command's outcome")
        assert answer["status"] == "completed" and answer["outcome"]["version"] == 1

        # The same command id again (a retry of the caller, a redelivery): no second version.
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
        again = new_command(model_name=model, dataset=name, reason="manual", requested_by="test",
                            command_id=f"c-{unique}")
        producer.produce(command_topic, event_bytes(again), model)
        producer.produce(command_topic, b"{not a command", model)
        failing = new_command(model_name=model, dataset="missing-dataset", reason="manual", requested_by="test",
                              command_id=f"f-{unique}")
        producer.produce(command_topic, event_bytes(failing), model)
        assert producer.flush(30) == 0
        failed = wait_for(lambda: (r := client.get(f"/v1/commands/f-{unique}")).status_code == 200 and r.json(),
                          timeout_s=120, what="the failing command's outcome")
        assert failed["status"] == "failed" and failed["outcome"]["reason"] == "unknown_dataset"
        assert client.get(f"/v1/models/{model}").status_code == 404  # the trainer has no such route
        assert registry.get(f"/v1/models/{model}/versions")["count"] == 1
        assert "trainer_commands_total" in client.get("/metrics").text
        assert client.get("/v1/commands/nope").status_code == 404

    letters = consume(settings.kafka_bootstrap, dlq(command_topic), count=1)
    assert json.loads(letters[0].value())["payload"]["payload"] == "{not a command"
    outcomes = consume(settings.kafka_bootstrap, settings.completed_topic, count=1,
                       match=lambda m: json.loads(m.value())["payload"]["command_id"] == f"c-{unique}")
    assert json.loads(outcomes[0].value())["payload"]["outcome"] == "promoted"
