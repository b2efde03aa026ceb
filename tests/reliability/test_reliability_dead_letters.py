"""Malformed records on every topic the drift service and the gateway consume go to ``<topic>.dlq``
with the reason, and never stop the consumer.

Pass criteria (issue 8.3, plan K8 for the other consumers): for each (topic, consumer) and each
kind of poison (not JSON; JSON that is not an envelope of the topic's event), one dead letter
naming the topic, the reason and the original text, written by that consumer; afterwards both
processes are alive and ready and a valid feature event is still counted. The trainer's command
topic and ingest's raw topics have the same check in their own suites (see README.md).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Producer
from schemas.ingest import FeatureEventV1
from tributary_kit.codec import encode_event

from deploy.localstack import ServiceProcess, free_port, http_ok
from schemas import topics
from services.inference.tests.integration.conftest import make_topics
from tests.fixtures.triton import TritonServer
from tests.reliability.processes import drift_process, port_of, read_topic, wait_for

pytestmark = pytest.mark.integration

POISONS = {"not-json": b"{not json \x00\xff", "not-an-envelope": b'{"payload": 1, "event_type": "nope"}'}


@pytest.fixture
def gateway(kafka_bootstrap: str, redis_url: str, triton: TritonServer, tmp_path: Path) -> Iterator[ServiceProcess]:
    suffix = uuid.uuid4().hex[:8]
    names = {k: f"test.{k}.{suffix}" for k in ("rollout", "requests", "responses")}
    make_topics(kafka_bootstrap, *names.values())
    port = free_port()
    env = {"INFERENCE_TRITON_GRPC_URL": triton.grpc_url, "INFERENCE_REDIS_URL": redis_url,
           "INFERENCE_KAFKA_BOOTSTRAP": kafka_bootstrap, "INFERENCE_PORT": str(port),
           "INFERENCE_GRPC_PORT": str(free_port()), "INFERENCE_REDIS_PREFIX": f"dlq-{suffix}:",
           "INFERENCE_ROLLOUT_TOPIC": names["rollout"], "INFERENCE_REQUEST_TOPIC": names["requests"],
           "INFERENCE_RESPONSE_TOPIC": names["responses"], "INFERENCE_GROUP_SUFFIX": f"-{suffix}",
           "INFERENCE_CANARY_ANALYSIS": "false", "INFERENCE_JOIN_LABELS": "false", "INFERENCE_LOG_JSON": "false"}
    process = ServiceProcess("inference", "inference", env, ready_url=f"http://127.0.0.1:{port}/readyz",
                             log_path=tmp_path / "inference.log")
    process.start()
    try:
        yield process
    finally:
        process.stop()


def test_malformed_records_on_every_consumed_topic_are_dead_lettered_and_consumers_go_on(
        kafka_bootstrap: str, gateway: ServiceProcess, tmp_path: Path, unique: str) -> None:
    drift = drift_process(kafka_bootstrap, tmp_path, f"drift-dlq-{unique}", DRIFT_WINDOW_SIZE="10")
    drift.start()
    try:
        settings_topics = {name: gateway.env[f"INFERENCE_{name.upper()}_TOPIC"] for name in ("rollout", "request")}
        consumed = {
            "drift": [topics.FEATURES, topics.PREDICTIONS, topics.LABELS, topics.DATASET_SPECS,
                      topics.MODEL_REGISTERED, topics.ROLLOUT_CHANGED],
            "inference": [topics.FEATURES, settings_topics["rollout"], settings_topics["request"]],
        }
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
        every_topic = sorted({t for ts in consumed.values() for t in ts})
        for topic in every_topic:
            for kind, value in POISONS.items():
                producer.produce(topic, key=f"poison-{unique}-{kind}", value=value)
        dataset = f"after-poison-{unique}"
        event = FeatureEventV1(event_id=f"{dataset}-0", dataset=dataset, entity_id="e0",
                               event_time=datetime(2026, 5, 1, tzinfo=UTC), features={"x": 1.0})
        producer.produce(topics.FEATURES, key="e0", value=encode_event(event, event_id=event.event_id,
                                                                        source="test", occurred_at=event.event_time))
        assert producer.flush(30) == 0

        def letters(topic: str) -> dict[tuple[str, str], dict[str, object]]:
            found = read_topic(kafka_bootstrap, topics.dlq(topic),
                               match=lambda r: (r.key or "").startswith(f"poison-{unique}-"))
            return {(r.value["source"], str(r.key)): r.value["payload"]
                    for r in found}

        wanted = {(service, topic) for service, ts in consumed.items() for topic in ts}

        def missing() -> set[tuple[str, str, str]]:
            out = set()
            for topic in every_topic:
                got = letters(topic)
                for service in ("drift", "inference"):
                    if (service, topic) not in wanted:
                        continue
                    for kind in POISONS:
                        if (service, f"poison-{unique}-{kind}") not in got:
                            out.add((service, topic, kind))
            return out

        wait_for(lambda: not missing(), "a dead letter for every poison on every consumed topic", 90, every_s=1.0)
        for topic in every_topic:
            for (_, key), letter in letters(topic).items():
                kind = key.removeprefix(f"poison-{unique}-")
                assert letter["topic"] == topic and letter["reason"], letter
                assert letter["payload"] == POISONS[kind].decode("utf-8", errors="replace"), letter

        # the consumers went on: the valid event after the poison is counted, both processes serve
        drift_url = f"http://127.0.0.1:{port_of(drift)}"
        wait_for(lambda: any(d["dataset"] == dataset and d["events"] == 1 for d in
                             httpx.get(f"{drift_url}/v1/drift/status", timeout=5).json()["datasets"]),
                 "the event after the poison to be counted", 60)
        assert drift.process is not None and drift.process.poll() is None and http_ok(drift.ready_url)
        assert gateway.process is not None and gateway.process.poll() is None and http_ok(gateway.ready_url)
        print(json.dumps({t: len(letters(t)) for t in every_topic}))
    finally:
        drift.stop()
