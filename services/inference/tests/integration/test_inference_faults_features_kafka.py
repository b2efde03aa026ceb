"""Triton killed mid-run, online features for /v1/predict, asynchronous inference over Kafka."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from confluent_kafka import Producer
from inference.settings import Settings
from prometheus_client import REGISTRY
from schemas.inference import InferenceRequestedV1, TensorValue
from schemas.ingest import FeatureEventV1
from schemas.topics import FEATURES, PREDICTIONS
from tributary_kit.codec import encode_event

from services.inference.tests.integration.conftest import MODEL, Gateway, set_rollout, v2_body
from services.inference.tests.onnx_models import reference
from tests.fixtures.kafka import consume
from tests.fixtures.triton import TritonServer, add_model

pytestmark = pytest.mark.integration

ROW = [[1.0, 2.0, 3.0, 4.0]]


def _hammer(g: Gateway, during: Callable[[], None]) -> tuple[Counter[int], Counter[str], float, list[str]]:
    statuses: Counter[int] = Counter()
    backends: Counter[str] = Counter()
    errors: list[str] = []
    slowest = 0.0
    stop = threading.Event()

    def load() -> None:
        nonlocal slowest
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                started = time.perf_counter()
                r = client.post(f"{g.url}/v2/models/{MODEL}/infer", json=v2_body(ROW))
                slowest = max(slowest, time.perf_counter() - started)
                statuses[r.status_code] += 1
                if r.status_code == 200:
                    backends[r.headers["x-tributary-backend"]] += 1
                else:
                    errors.append(r.json()["error"])

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        g.wait_for(lambda: statuses.total() > 30)
        during()
        before = statuses.total()
        g.wait_for(lambda: statuses.total() > before + 100, timeout_s=60)
    finally:
        stop.set()
        for t in threads:
            t.join()
    return statuses, backends, slowest, errors


def test_triton_killed_mid_run_falls_back_to_onnxruntime(
        private_triton: TritonServer, registry_repo: Path, settings_for: Callable[..., Settings],
        gateway_factory: Callable[[Settings], Gateway]) -> None:
    add_model(private_triton, registry_repo, MODEL)
    g = gateway_factory(settings_for(private_triton, fallback="onnxruntime", backend_timeout_s=1.0))
    set_rollout(g, "champion", 1)
    statuses, backends, slowest, errors = _hammer(g, private_triton.kill)
    assert set(statuses) == {200}, (statuses, errors[:3])
    assert backends["triton"] > 0 and backends["onnxruntime"] > 100
    assert slowest < 2.0
    r = httpx.post(f"{g.url}/v2/models/{MODEL}/infer", json=v2_body(ROW))
    np.testing.assert_allclose(r.json()["outputs"][0]["data"], reference(1, np.array(ROW)).reshape(-1), rtol=1e-5)
    assert httpx.get(f"{g.url}/v2/health/ready").status_code == 200


def test_triton_killed_mid_run_without_fallback_gives_clean_503s(
        private_triton: TritonServer, registry_repo: Path, settings_for: Callable[..., Settings],
        gateway_factory: Callable[[Settings], Gateway]) -> None:
    add_model(private_triton, registry_repo, MODEL)
    g = gateway_factory(settings_for(private_triton, fallback="none", backend_timeout_s=1.0,
                                     breaker_failures=3, breaker_cooldown_s=0.3))
    set_rollout(g, "champion", 1)

    def probes(outcome: str) -> float:
        return sum(REGISTRY.get_sample_value("inference_breaker_probes_total",
                                             {"backend": "triton", "kind": kind, "outcome": outcome}) or 0
                   for kind in ("request", "health"))

    opened = {"backend": "triton", "from_state": "closed", "to_state": "open"}
    opened_before = REGISTRY.get_sample_value("inference_breaker_transitions_total", opened) or 0
    failed_before = probes("failed")
    statuses, _, slowest, errors = _hammer(g, private_triton.kill)
    assert set(statuses) <= {200, 503} and statuses[503] > 100, statuses
    assert all("Triton" in e and ("unreachable" in e or "circuit breaker" in e) for e in errors), set(errors)
    assert sum("circuit breaker open" in e for e in errors) > 50   # turned away at once, Triton not called
    assert slowest < 2.0  # never hangs: every answer within the backend deadline
    assert (REGISTRY.get_sample_value("inference_breaker_transitions_total", opened) or 0) > opened_before
    ready = httpx.get(f"{g.url}/v2/health/ready")
    assert ready.status_code == 503 and "Triton" in ready.json()["reason"]
    assert ready.json()["breaker"] in ("open", "half_open"), ready.json()
    # After each cooldown one probe (a request or the readiness check) finds Triton still gone.
    g.wait_for(lambda: httpx.get(f"{g.url}/v2/health/ready").status_code == 503 and probes("failed") > failed_before,
               timeout_s=10, message="a failed half-open probe")
    r = httpx.post(f"{g.url}/v2/models/{MODEL}/infer", json=v2_body(ROW))
    assert r.status_code == 503 and r.headers["retry-after"] == "1"


def _publish(bootstrap: str, topic: str, key: str, payload: object) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, encode_event(payload, event_id=str(uuid.uuid4()), source="test",  # type: ignore[arg-type]
                                         occurred_at=datetime.now(UTC)), key)
    assert producer.flush(10) == 0


def test_predict_merges_request_and_online_features(served: TritonServer, settings_for: Callable[..., Settings],
                                                    gateway_factory: Callable[[Settings], Gateway],
                                                    kafka_bootstrap: str) -> None:
    dataset = f"credit-{uuid.uuid4().hex[:8]}"
    g = gateway_factory(settings_for(served, model_features={MODEL: ["age", "income", "debt", "late"]},
                                     model_datasets={MODEL: dataset}))
    set_rollout(g, "champion", 1)
    old = FeatureEventV1(event_id=f"e-{uuid.uuid4()}", dataset=dataset, entity_id="c-1",
                         event_time=datetime(2026, 1, 1, tzinfo=UTC), features={"income": 99.0, "debt": 99.0})
    new = FeatureEventV1(event_id=f"e-{uuid.uuid4()}", dataset=dataset, entity_id="c-1",
                         event_time=datetime(2026, 1, 2, tzinfo=UTC), features={"income": 2.0, "debt": 3.0, "late": 4})
    stale_before = REGISTRY.get_sample_value("inference_feature_writes_total", {"outcome": "stale"}) or 0
    _publish(kafka_bootstrap, FEATURES, "c-1", new)
    _publish(kafka_bootstrap, FEATURES, "c-1", old)  # late and older: must not win
    g.wait_for(lambda: (REGISTRY.get_sample_value("inference_feature_writes_total", {"outcome": "stale"}) or 0)
               > stale_before, message="the late, older feature event was never handled")
    r = httpx.post(f"{g.url}/v1/predict", json={"model": MODEL, "entity_id": "c-1", "features": {"age": 1.0}})
    body = r.json()
    assert body["features"] == {"from_request": ["age"], "from_store": ["debt", "income", "late"],
                                "store_available": True}
    np.testing.assert_allclose(body["outputs"]["y"], reference(1, np.array(ROW)).reshape(-1), rtol=1e-5)
    assert r.headers["x-tributary-route"] == "champion"
    missing = httpx.post(f"{g.url}/v1/predict", json={"model": MODEL, "entity_id": "nobody", "features": {"age": 1}})
    assert missing.status_code == 400 and "neither in the request nor in the online store" in missing.json()["error"]
    wrong = httpx.post(f"{g.url}/v1/predict",
                       json={"model": MODEL, "entity_id": "c-1", "features": {"age": "old"}})
    assert wrong.status_code == 400 and "must be a number" in wrong.json()["error"]


def test_kafka_requests_are_routed_like_rest_and_predictions_are_published(
        gateway: Gateway, kafka_bootstrap: str, topics: dict[str, str]) -> None:
    set_rollout(gateway, "canary", 2, weight=0.5)
    entities = [f"k-{i}" for i in range(20)]
    rest = {}
    for e in entities:
        r = httpx.post(f"{gateway.url}/v2/models/{MODEL}/infer", json=v2_body(ROW), headers={"x-tributary-entity": e})
        rest[e] = int(r.headers["x-tributary-model-version"])
    for e in entities:
        _publish(kafka_bootstrap, topics["requests"], e, InferenceRequestedV1(
            request_id=f"r-{e}", model_name=MODEL, entity_id=e, requested_at=datetime.now(UTC),
            inputs=[TensorValue(name="x", datatype="FP32", shape=[1, 4], data=ROW[0])]))
    _publish(kafka_bootstrap, topics["requests"], "bad", InferenceRequestedV1(
        request_id="r-bad", model_name="nope", entity_id="bad", requested_at=datetime.now(UTC),
        inputs=[TensorValue(name="x", datatype="FP32", shape=[1, 4], data=ROW[0])]))
    answers = {json.loads(m.value())["payload"]["request_id"]: json.loads(m.value())["payload"]
               for m in consume(kafka_bootstrap, topics["responses"], count=len(entities) + 1, timeout_s=60)}
    for e in entities:
        a = answers[f"r-{e}"]
        assert a["model_version"] == rest[e] and a["status"] == 200
        np.testing.assert_allclose(a["outputs"][0]["data"], reference(a["model_version"], np.array(ROW)).reshape(-1),
                                   rtol=1e-5)
    assert answers["r-bad"]["status"] == 404 and "no rollout" in answers["r-bad"]["error"]
    events = consume(kafka_bootstrap, PREDICTIONS, count=1, timeout_s=30,
                     match=lambda m: json.loads(m.value())["payload"]["request_id"] == "r-k-3")
    payload = json.loads(events[0].value())["payload"]
    assert payload["entity_id"] == "k-3" and payload["model_version"] == rest["k-3"]
    assert payload["route"] == ("canary" if rest["k-3"] == 2 else "champion") and payload["latency_ms"] > 0


def test_a_burst_of_kafka_requests_beyond_the_limit_waits_for_room_and_is_answered(
        served: TritonServer, settings_for: Callable[..., Settings], gateway_factory: Callable[[Settings], Gateway],
        kafka_bootstrap: str, topics: dict[str, str]) -> None:
    # A limit of 2 requests in flight: the consumer's batch (up to 64) exceeds it by itself.
    g = gateway_factory(settings_for(served, max_inflight=2))
    set_rollout(g, "champion", 1)
    waits_before = _overload_waits(g)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    ids = [f"burst-{i}" for i in range(64)]
    for i, rid in enumerate(ids):
        request = InferenceRequestedV1(request_id=rid, model_name=MODEL, entity_id=f"b-{i}",
                                       requested_at=datetime.now(UTC),
                                       inputs=[TensorValue(name="x", datatype="FP32", shape=[1, 4], data=ROW[0])])
        producer.produce(topics["requests"], encode_event(request, event_id=str(uuid.uuid4()), source="test",
                                                          occurred_at=datetime.now(UTC)), f"b-{i}")
    assert producer.flush(10) == 0
    answers = {json.loads(m.value())["payload"]["request_id"]: json.loads(m.value())["payload"]
               for m in consume(kafka_bootstrap, topics["responses"], count=len(ids), timeout_s=60)}
    assert sorted(answers) == sorted(ids)
    assert {rid: (a["status"], a["error"]) for rid, a in answers.items() if a["status"] != 200} == {}
    assert _overload_waits(g) > waits_before, "no request waited: the burst never reached the limit"


def _overload_waits(g: Gateway) -> float:
    """``inference_async_overload_waits_total`` (the registry is the test process's: compare before and after)."""
    lines = [line for line in httpx.get(f"{g.url}/metrics", timeout=10).text.splitlines()
             if line.startswith("inference_async_overload_waits_total ")]
    assert lines, "the gateway exports no inference_async_overload_waits_total"
    return float(lines[0].split()[-1])
