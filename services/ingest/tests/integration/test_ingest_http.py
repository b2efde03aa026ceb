"""Events over HTTP against the real broker: read back field for field, refusals dead-lettered."""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from ingest.app import create_app
from ingest.settings import Settings
from schemas.deadletter import DeadLetterV1
from schemas.envelope import Envelope
from schemas.ingest import FeatureEventV1, LabelEventV1
from schemas.topics import FEATURES, LABELS

from tests.fixtures.kafka import consume

from .conftest import make_event, spec_body, value

pytestmark = pytest.mark.integration

FEATURES_DLQ = f"{FEATURES}.dlq"


def assert_same_event(sent: dict[str, Any], envelope: Envelope[FeatureEventV1]) -> None:
    event = envelope.payload
    assert envelope.event_id == sent["event_id"]
    assert envelope.event_type == FEATURES
    assert envelope.source == "ingest"
    assert envelope.traceparent and envelope.traceparent.startswith("00-")
    assert event.event_id == sent["event_id"]
    assert event.dataset == sent["dataset"]
    assert event.entity_id == sent["entity_id"]
    assert event.event_time == datetime.fromisoformat(sent["event_time"])
    assert event.features == sent["features"]
    assert event.label == sent.get("label")


def test_one_event_is_acknowledged_and_arrives_field_for_field(client: TestClient, dataset: str,
                                                               kafka_bootstrap: str) -> None:
    sent = make_event(dataset, label=1)
    response = client.post("/v1/events", json=sent)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["event_id"] == sent["event_id"] and body["topic"] == FEATURES

    [msg] = consume(kafka_bootstrap, FEATURES, count=1,
                    match=lambda m: m.partition() == body["partition"] and m.offset() == body["offset"])
    assert msg.key() == sent["entity_id"].encode()
    assert_same_event(sent, Envelope[FeatureEventV1].model_validate_json(msg.value()))


@pytest.mark.parametrize("fmt", ["json", "ndjson"])
def test_a_batch_arrives_whole(client: TestClient, dataset: str, kafka_bootstrap: str, fmt: str) -> None:
    sent = [make_event(dataset, features={"age": 20 + i % 90, "income": None if i % 7 == 0 else i * 1.5})
            for i in range(200)]
    if fmt == "json":
        response = client.post("/v1/events/batch", json=sent)
    else:
        response = client.post("/v1/events/batch", content="\n".join(json.dumps(e) for e in sent),
                               headers={"content-type": "application/x-ndjson"})
    assert response.status_code == 200, response.text
    assert response.json() == {"total": 200, "accepted": 200, "rejected": 0}

    by_id = {e["event_id"]: e for e in sent}
    got = consume(kafka_bootstrap, FEATURES, count=200, match=lambda m: value(m)["payload"]["dataset"] == dataset)
    envelopes = [Envelope[FeatureEventV1].model_validate_json(m.value()) for m in got]
    assert sorted(e.event_id for e in envelopes) == sorted(by_id)
    for envelope in envelopes:
        assert_same_event(by_id[envelope.event_id], envelope)


def test_a_mixed_batch_publishes_the_valid_rows_and_names_every_bad_one(
    client: TestClient, dataset: str, kafka_bootstrap: str
) -> None:
    good = [make_event(dataset) for _ in range(5)]
    bad_age = make_event(dataset, features={"age": "old"})
    bad_region = make_event(dataset, features={"region": "west", "colour": "red"})
    broken = f"{{not json {dataset}"
    lines = [json.dumps(good[0]), json.dumps(bad_age), json.dumps(good[1]), broken, json.dumps(good[2]),
             json.dumps(bad_region), *(json.dumps(g) for g in good[3:])]
    response = client.post("/v1/events/batch", content="\n".join(lines),
                           headers={"content-type": "application/x-ndjson"})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "rejected"
    assert (body["total"], body["accepted"], body["rejected"]) == (8, 5, 3)
    assert sorted(body["accepted_event_ids"]) == sorted(g["event_id"] for g in good)
    problems = {(p["row"], p["field"]) for p in body["problems"]}
    assert problems == {(1, "features.age"), (3, ""), (5, "features.region"), (5, "features.colour")}
    assert "line 4 is not valid JSON" in next(p["message"] for p in body["problems"] if p["row"] == 3)

    got = consume(kafka_bootstrap, FEATURES, count=5, match=lambda m: value(m)["payload"]["dataset"] == dataset)
    assert sorted(value(m)["event_id"] for m in got) == sorted(g["event_id"] for g in good)

    letters = consume(kafka_bootstrap, FEATURES_DLQ, count=3, match=lambda m: dataset in value(m)["payload"]["payload"])
    records = [Envelope[DeadLetterV1].model_validate_json(m.value()).payload for m in letters]
    by_row = {r.problems[0].row: r for r in records}
    assert by_row[1].problems[0].event_id == bad_age["event_id"]
    assert json.loads(by_row[1].payload) == bad_age
    assert "features.age: expected a number" in by_row[1].reason
    assert by_row[3].payload == broken
    assert {p.field for p in by_row[5].problems} == {"features.region", "features.colour"}
    assert all(r.origin == "http" and r.topic == FEATURES for r in records)


BAD_SINGLE_EVENTS: list[tuple[str, Any, str, str]] = [
    ("wrong type", {"features": {"age": "forty"}}, "features.age", "expected a number"),
    ("missing field", {"entity_id": None}, "entity_id", "required field is missing"),
    ("boolean feature", {"features": {"age": True}}, "features.age", "booleans are not feature values"),
    ("out of range", {"features": {"age": 7}}, "features.age", "below the minimum"),
    ("bad category", {"features": {"region": "west"}}, "features.region", "not an allowed category"),
    ("unknown feature", {"features": {"colour": "red"}}, "features.colour", "unknown feature"),
    ("unknown dataset", {"dataset": "no-such-dataset"}, "dataset", "unknown dataset 'no-such-dataset'"),
    ("naive time", {"event_time": "2026-11-01T10:00:00"}, "event_time", "timezone"),
    ("unknown field", {"colour": "red"}, "colour", "unknown field"),
]


@pytest.mark.parametrize(("case", "changes", "field", "fragment"), BAD_SINGLE_EVENTS,
                         ids=[c[0] for c in BAD_SINGLE_EVENTS])
def test_each_bad_event_gets_a_clear_4xx_and_a_dead_letter(
    client: TestClient, dataset: str, kafka_bootstrap: str, case: str, changes: dict[str, Any], field: str,
    fragment: str,
) -> None:
    sent = make_event(dataset, **changes)
    sent = {k: v for k, v in sent.items() if v is not None}
    response = client.post("/v1/events", json=sent)
    assert response.status_code == 422, response.text
    problems = response.json()["problems"]
    assert any(p["field"] == field and fragment in p["message"] for p in problems), problems

    [letter] = consume(kafka_bootstrap, FEATURES_DLQ, count=1,
                       match=lambda m: sent["event_id"] in value(m)["payload"]["payload"])
    record = Envelope[DeadLetterV1].model_validate_json(letter.value()).payload
    assert json.loads(record.payload) == sent
    assert fragment in record.reason


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused_per_row(client: TestClient, dataset: str, kafka_bootstrap: str,
                                                token: str) -> None:
    good = make_event(dataset)
    bad = make_event(dataset)
    text = json.dumps(bad).replace('"age": 42', f'"age": {token}')
    assert token in text
    body = f"[{json.dumps(good)}, {text}]"
    response = client.post("/v1/events/batch", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["problems"] == [{"row": 1, "event_id": bad["event_id"], "field": "features.age",
                                            "message": "NaN and infinities are not allowed"}]
    consume(kafka_bootstrap, FEATURES, count=1, match=lambda m: value(m)["event_id"] == good["event_id"])
    [letter] = consume(kafka_bootstrap, FEATURES_DLQ, count=1,
                       match=lambda m: bad["event_id"] in value(m)["payload"]["payload"])
    kept = json.loads(value(letter)["payload"]["payload"])["features"]["age"]
    if token == "NaN":
        assert math.isnan(kept)
    else:
        assert kept == float(token.replace("Infinity", "inf"))


@pytest.mark.parametrize(
    ("case", "content", "content_type", "status", "fragment"),
    [
        ("non-JSON", b"event_id=MARK&dataset=x", "application/json", 400, "not valid JSON"),
        ("wrong content type", b"<event>MARK</event>", "application/xml", 415, "'application/xml' is not supported"),
        ("no content type", b'{"m": "MARK"}', None, 415, "(none)"),
        ("array to single", b'[{"m": "MARK"}]', "application/json", 400, "batch"),
    ],
)
def test_unreadable_requests_are_refused_and_dead_lettered(
    client: TestClient, kafka_bootstrap: str, unique: str, case: str, content: bytes, content_type: str | None,
    status: int, fragment: str,
) -> None:
    marker = f"marker-{unique}".encode()
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/v1/events", content=content.replace(b"MARK", marker), headers=headers)
    assert response.status_code == status, response.text
    assert fragment in response.json()["message"]
    [letter] = consume(kafka_bootstrap, FEATURES_DLQ, count=1,
                       match=lambda m: marker.decode() in value(m)["payload"]["payload"])
    assert fragment in value(letter)["payload"]["reason"]


def test_oversized_bodies_and_batches_get_413_and_a_dead_letter(settings: Settings, dataset: str,
                                                               kafka_bootstrap: str, unique: str) -> None:
    small = settings.model_copy(update={"max_event_bytes": 2048, "max_body_bytes": 64 * 1024,
                                        "max_batch_events": 10, "consume_raw": False})
    with TestClient(create_app(small)) as client:
        big = make_event(dataset, features={"region": "x" * 4000}, entity_id=f"big-{unique}")
        response = client.post("/v1/events", json=big)
        assert response.status_code == 413
        assert "over the limit of 2048 bytes" in response.json()["message"]

        many = [make_event(dataset) for _ in range(11)]
        response = client.post("/v1/events/batch", json=many)
        assert response.status_code == 413
        assert "batch of 11 events is over the limit of 10" in response.json()["message"]

        huge = [make_event(dataset, features={"region": "y" * 1000}) for _ in range(100)]
        response = client.post("/v1/events/batch", json=huge)
        assert response.status_code == 413

    letters = consume(kafka_bootstrap, FEATURES_DLQ, count=1,
                      match=lambda m: f"big-{unique}" in value(m)["payload"]["payload"])
    record = Envelope[DeadLetterV1].model_validate_json(letters[0].value()).payload
    assert record.payload_size > 2048 and "over the limit" in record.reason
    consume(kafka_bootstrap, FEATURES_DLQ, count=1,
            match=lambda m: many[0]["event_id"] in value(m)["payload"]["payload"])


def test_labels(client: TestClient, dataset: str, kafka_bootstrap: str, unique: str) -> None:
    label = {"event_id": f"l-{unique}", "dataset": dataset, "entity_id": "c-1",
             "event_time": "2026-11-01T10:00:00+00:00", "label": 1, "feature_event_id": "e-1"}
    response = client.post("/v1/labels", json=label)
    assert response.status_code == 200, response.text
    [msg] = consume(kafka_bootstrap, LABELS, count=1, match=lambda m: value(m)["event_id"] == label["event_id"])
    event = Envelope[LabelEventV1].model_validate_json(msg.value()).payload
    assert event.model_dump(mode="json") == {**label, "schema_version": 1, "event_time": "2026-11-01T10:00:00Z"}

    response = client.post("/v1/labels/batch", json=[{**label, "event_id": f"l2-{unique}", "label": 7}])
    assert response.status_code == 422
    assert response.json()["problems"][0]["field"] == "label"
    consume(kafka_bootstrap, f"{LABELS}.dlq", count=1,
            match=lambda m: f"l2-{unique}" in value(m)["payload"]["payload"])


def test_dataset_specs(client: TestClient, settings: Settings, unique: str) -> None:
    name = f"specs-{unique}"
    body = spec_body(name)
    assert client.post("/v1/datasets", json=body).status_code == 201
    again = client.post("/v1/datasets", json=body)
    assert again.status_code == 200 and again.json()["revision"] == 1

    changed = {**body, "description": "changed"}
    conflict = client.post("/v1/datasets", json=changed)
    assert conflict.status_code == 409
    assert f"PUT /v1/datasets/{name}" in conflict.json()["message"]
    replaced = client.put(f"/v1/datasets/{name}", json=changed)
    assert replaced.status_code == 200 and replaced.json()["revision"] == 2

    assert client.put(f"/v1/datasets/other-{unique}", json=changed).status_code == 400
    assert client.get(f"/v1/datasets/{name}").json()["spec"]["description"] == "changed"
    assert name in [d["spec"]["name"] for d in client.get("/v1/datasets").json()["datasets"]]
    missing = client.get("/v1/datasets/nothing-here")
    assert missing.status_code == 404 and "register its spec first" in missing.json()["message"]

    invalid = client.post("/v1/datasets", json={**body, "features": body["features"] * 2})
    assert invalid.status_code == 422
    assert "duplicate feature names: age, income, region" in invalid.json()["message"]

    # The compacted topic is the source of truth: a new replica knows the spec at start-up.
    with TestClient(create_app(settings.model_copy(update={"consume_raw": False}))) as replica:
        got = replica.get(f"/v1/datasets/{name}").json()
        assert (got["revision"], got["spec"]["description"]) == (2, "changed")


def test_operations_endpoints(client: TestClient, dataset: str) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    client.post("/v1/events", json=make_event(dataset))
    text = client.get("/metrics").text
    assert 'ingest_events_total{kind="features",origin="http",outcome="accepted"}' in text
    assert "ingest_request_seconds_bucket" in text
    doc = client.get("/openapi.json").json()
    assert "FeatureEventV1" in doc["components"]["schemas"]
    assert "application/x-ndjson" in doc["paths"]["/v1/events/batch"]["post"]["requestBody"]["content"]


def test_batch_routes_continue_the_callers_trace(client: TestClient, dataset: str, kafka_bootstrap: str) -> None:
    """The batch routes are answered in front of FastAPI (``ingest.batch_asgi``): traces still join."""
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    sent = [make_event(dataset) for _ in range(3)]
    response = client.post("/v1/events/batch", json=sent,
                           headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    ids = {e["event_id"] for e in sent}
    got = consume(kafka_bootstrap, FEATURES, count=3, match=lambda m: value(m)["event_id"] in ids)
    parents = {value(m)["traceparent"] for m in got}
    assert len(parents) == 1
    [parent] = parents
    assert parent.split("-")[1] == trace_id and parent.split("-")[2] != "00f067aa0ba902b7"


def test_batch_routes_answer_refusals_as_the_other_routes_do(client: TestClient, dataset: str) -> None:
    """The same error body from the plain ASGI batch route and from the FastAPI single-event route."""
    unknown = make_event(dataset) | {"dataset": "no-such-dataset-anywhere"}
    single = client.post("/v1/events", json=unknown)
    batch = client.post("/v1/events/batch", json=[unknown])
    assert single.status_code == batch.status_code == 422
    assert batch.json()["error"] == single.json()["error"] == "rejected"
    assert batch.json()["problems"] == single.json()["problems"]
    assert "no-such-dataset-anywhere" in batch.json()["problems"][0]["message"]
    wrong_type = client.post("/v1/labels/batch", content=b"[]", headers={"content-type": "text/plain"})
    assert wrong_type.status_code == 415 and wrong_type.json()["error"] == "unsupported_media_type"
    empty = client.post("/v1/labels/batch", content=b"[]", headers={"content-type": "application/json"})
    assert empty.status_code == 400 and empty.json()["error"] == "empty_batch"
