"""The direct-Kafka path, back-pressure and a broker that goes away, against real brokers."""

from __future__ import annotations

import json
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from fastapi.testclient import TestClient
from ingest.app import create_app
from ingest.settings import Settings
from schemas.deadletter import DeadLetterV1
from schemas.envelope import Envelope
from schemas.ingest import FeatureEventV1
from schemas.topics import FEATURES, FEATURES_RAW, LABELS, LABELS_RAW

from tests.fixtures.kafka import Broker, consume

from .conftest import make_event, spec_body, value

pytestmark = pytest.mark.integration


def produce_raw(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    for v in values:
        producer.produce(topic, v, key=b"raw")
    assert producer.flush(30) == 0


def committed(bootstrap: str, group: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        offsets = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return sum(max(o.offset, 0) for o in offsets)
    finally:
        consumer.close()


def test_raw_records_are_validated_into_the_validated_topic_and_the_dead_letter_topic(
    client: TestClient, dataset: str, kafka_bootstrap: str, settings: Settings, unique: str
) -> None:
    good = [make_event(dataset, features={"age": 30 + i}) for i in range(20)]
    bad = make_event(dataset, features={"region": "mars"})
    garbage = f"not json {unique}".encode()
    values = [json.dumps(e).encode() for e in good[:10]] + [json.dumps(bad).encode(), garbage] + \
             [json.dumps(e).encode() for e in good[10:]]
    produce_raw(kafka_bootstrap, FEATURES_RAW, values)

    got = consume(kafka_bootstrap, FEATURES, count=20, match=lambda m: value(m)["payload"]["dataset"] == dataset)
    by_id = {e["event_id"]: e for e in good}
    for msg in got:
        event = Envelope[FeatureEventV1].model_validate_json(msg.value()).payload
        assert event.features == by_id[event.event_id]["features"]
        assert msg.key() == event.entity_id.encode()  # re-keyed by entity

    letters = consume(kafka_bootstrap, f"{FEATURES_RAW}.dlq", count=2,
                      match=lambda m: bad["event_id"] in value(m)["payload"]["payload"]
                      or unique in value(m)["payload"]["payload"])
    records = {r.payload: r for r in (Envelope[DeadLetterV1].model_validate_json(m.value()).payload for m in letters)}
    assert records[garbage.decode()].reason.startswith("row: record is not valid JSON")
    assert records[garbage.decode()].origin == "kafka" and records[garbage.decode()].topic == FEATURES_RAW
    assert records[garbage.decode()].offset is not None and records[garbage.decode()].key == "raw"
    assert "features.region" in records[json.dumps(bad)].reason

    # Offsets are committed once everything is published: the group has consumed all 22.
    deadline = time.monotonic() + 30
    while committed(kafka_bootstrap, settings.raw_group_id, FEATURES_RAW) < 22 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert committed(kafka_bootstrap, settings.raw_group_id, FEATURES_RAW) >= 22


def test_raw_labels(client: TestClient, dataset: str, kafka_bootstrap: str, unique: str) -> None:
    label = {"event_id": f"rl-{unique}", "dataset": dataset, "entity_id": "c-9",
             "event_time": "2026-11-01T00:00:00Z", "label": 0}
    produce_raw(kafka_bootstrap, LABELS_RAW, [json.dumps(label).encode()])
    consume(kafka_bootstrap, LABELS, count=1, match=lambda m: value(m)["event_id"] == label["event_id"])


def test_a_full_producer_queue_sheds_load_with_429_and_loses_nothing_acknowledged(
    settings: Settings, dataset: str, kafka_bootstrap: str
) -> None:
    tight = settings.model_copy(update={"queue_max_messages": 5, "enqueue_timeout_s": 0.0, "consume_raw": False,
                                        "producer_config": {"linger.ms": 200}})
    events = [make_event(dataset) for _ in range(200)]
    with TestClient(create_app(tight)) as client:
        response = client.post("/v1/events/batch", json=events)
        assert response.status_code == 429, response.text
        assert response.headers["retry-after"] == "1"
        body = response.json()
        assert "overloaded" in body["message"] and "send the rest again" in body["message"]
        accepted = body["accepted_event_ids"]
        assert 0 < len(accepted) < 200
        # What was acknowledged is really there; the client resends the rest and all arrive.
        rest = [e for e in events if e["event_id"] not in set(accepted)]
        for start in range(0, len(rest), 5):
            assert client.post("/v1/events/batch", json=rest[start:start + 5]).status_code == 200
    got = consume(kafka_bootstrap, FEATURES, count=200, match=lambda m: value(m)["payload"]["dataset"] == dataset)
    assert {value(m)["event_id"] for m in got} == {e["event_id"] for e in events}


def test_a_stopped_broker_gives_503_with_retry_after_and_not_ready(private_broker: Broker, unique: str) -> None:
    settings = Settings(kafka_bootstrap=private_broker.bootstrap, delivery_timeout_s=3, readiness_timeout_s=1,
                        raw_group_id=f"raw-{unique}", log_json=False, startup_timeout_s=60)
    with TestClient(create_app(settings)) as client:
        name = f"down-{unique}"
        assert client.post("/v1/datasets", json=spec_body(name)).status_code == 201
        assert client.post("/v1/events", json=make_event(name)).status_code == 200
        assert client.get("/readyz").status_code == 200

        private_broker.stop()
        event = make_event(name)
        response = client.post("/v1/events", json=event)
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "1"
        assert response.json()["failed_event_ids"] == [event["event_id"]]
        assert "send them again" in response.json()["message"]
        # A checked batch (the compiled fast path) names every event the broker did not take.
        batch = [make_event(name) for _ in range(3)]
        response = client.post("/v1/events/batch", json=batch)
        assert response.status_code == 503, response.text
        assert response.json()["failed_event_ids"] == [e["event_id"] for e in batch]
        assert response.json()["accepted_event_ids"] == []
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "Kafka broker unreachable" in ready.json()["reason"]

        private_broker.start()
        deadline = time.monotonic() + 60
        while (response := client.post("/v1/events", json=event)).status_code != 200:
            assert time.monotonic() < deadline, response.text
            time.sleep(0.5)
    consume(private_broker.bootstrap, FEATURES, count=1, match=lambda m: value(m)["event_id"] == event["event_id"])
