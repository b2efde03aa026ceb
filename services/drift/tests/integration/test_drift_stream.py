"""The Faust stream on the real broker: reports and one retrain command per shift, dead letters,
and a restart in the middle of a window that loses nothing."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Producer
from drift.reference import stats_from_sample
from schemas.envelope import Event
from schemas.ingest import FeatureEventV1
from schemas.registry import RolloutChangedV1
from tributary_kit.codec import encode_event

from deploy.localstack import ServiceProcess
from schemas import topics
from tests.fixtures.kafka import consume

pytestmark = pytest.mark.integration
T0 = datetime(2026, 3, 1, tzinfo=UTC)
MakeDrift = Callable[..., tuple[ServiceProcess, int]]


def publish(bootstrap: str, topic: str, events: list[tuple[str, Event]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for key, event in events:
        producer.produce(topic, key=key, value=encode_event(event, event_id=uuid.uuid4().hex, source="test",
                                                            occurred_at=T0))
    assert producer.flush(30) == 0


def features(dataset: str, n: int, *, start: int = 0, shift: float = 0.0, seed: int = 0, key: str | None = None
             ) -> list[tuple[str, Event]]:
    rng = np.random.default_rng(seed)
    out: list[tuple[str, Event]] = []
    for i in range(start, start + n):
        e = FeatureEventV1(event_id=f"{dataset}-{i}", dataset=dataset, entity_id=f"e{i}",
                           event_time=T0 + timedelta(seconds=i),
                           features={"x": float(rng.normal(shift)), "c": str(rng.choice(["a", "b", "c"]))})
        out.append((key or e.entity_id, e))
    return out


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def wait_for(predicate: Any, what: str, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def reports_of(bootstrap: str, dataset: str, count: int) -> list[dict[str, Any]]:
    msgs = consume(bootstrap, topics.DRIFT_REPORTS, count=count, match=lambda m: m.key() == dataset.encode(),
                   timeout_s=90)
    return [json.loads(m.value())["payload"] for m in msgs]


def champion(dataset: str, registry: Any, model: str) -> None:
    rng = np.random.default_rng(99)
    stats = stats_from_sample({"x": rng.normal(size=2000).tolist()},
                              {"c": rng.choice(["a", "b", "c"], size=2000).tolist()})
    registry.versions[(model, 1)] = {"model_name": model, "version": 1, "dataset": dataset, "reference_stats": stats}


def test_drift_stream_reports_and_one_retrain_command(kafka_bootstrap: str, stub_registry: Any,
                                                     make_drift: MakeDrift, unique: str) -> None:
    dataset, model = f"drift-{unique}", f"model-{unique}"
    champion(dataset, stub_registry, model)
    service, port = make_drift(f"drift-it-{unique}", DRIFT_CONSECUTIVE_WINDOWS="2", DRIFT_COOLDOWN_S="0")
    service.start()
    try:
        publish(kafka_bootstrap, topics.ROLLOUT_CHANGED, [(f"{model}/champion", RolloutChangedV1(
            model_name=model, alias="champion", version=1, changed_by="test", changed_at=T0))])
        wait_for(lambda: any(d["model_name"] == model for d in get(f"http://127.0.0.1:{port}/v1/drift/status")
                             ["datasets"]), "the champion's reference", 60)
        # One partition (keyed by the dataset): windows count events in arrival order, and across
        # partitions that order (so each window's sample) would change from run to run.
        publish(kafka_bootstrap, topics.FEATURES, features(dataset, 300, seed=1, key=dataset))
        wait_for(lambda: _events(port, dataset) == 300, "300 clean events applied")
        publish(kafka_bootstrap, topics.FEATURES, features(dataset, 500, start=300, shift=1.5, seed=2, key=dataset))
        reports = reports_of(kafka_bootstrap, dataset, 8)
        assert [r["report_id"] for r in reports] == [f"{dataset}-w{i}" for i in range(8)]
        assert [r["drifted"] for r in reports[:3]] == [False] * 3
        assert all(r["drifted"] and "x" in r["drifted_features"] for r in reports[3:])
        assert [r["retrain_requested"] for r in reports] == [False] * 4 + [True] + [False] * 3
        ks = next(x for x in reports[4]["results"] if x["feature"] == "x" and x["test"] == "ks")
        assert ks["sample_size"] == 100 and ks["adjusted_p_value"] < 0.05
        assert reports[0]["model_name"] == model and reports[0]["model_version"] == 1
        assert sum(o["end_offset"] - o["start_offset"] for o in reports[0]["offsets"]) == 100
        [command] = consume(kafka_bootstrap, topics.RETRAIN_COMMANDS, count=1,
                            match=lambda m: m.key() == model.encode(), timeout_s=30)
        payload = json.loads(command.value())["payload"]
        assert payload["reason"] == "drift" and payload["drift_report_id"] == f"{dataset}-w4"
        status = get(f"http://127.0.0.1:{port}/v1/drift/status")
        mine = next(d for d in status["datasets"] if d["dataset"] == dataset)
        assert mine["policy"]["commands"] == 1 and mine["reference"]["source"] == "registry"
        recent = get(f"http://127.0.0.1:{port}/v1/drift/reports?dataset={dataset}&limit=2")
        assert [r["report_id"] for r in recent["data"]] == [f"{dataset}-w7", f"{dataset}-w6"]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert f'drift_drifted{{dataset="{dataset}",feature="x",test="ks"}} 1.0' in metrics
    finally:
        service.stop()


def test_drift_stream_dead_letters_poison_records(kafka_bootstrap: str, make_drift: MakeDrift,
                                                  unique: str) -> None:
    service, _ = make_drift(f"drift-dlq-{unique}")
    service.start()
    try:
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        producer.produce(topics.FEATURES, key=f"poison-{unique}", value=b"{not json")
        assert producer.flush(30) == 0
        [msg] = consume(kafka_bootstrap, topics.dlq(topics.FEATURES), count=1,
                        match=lambda m: m.key() == f"poison-{unique}".encode(), timeout_s=60)
        letter = json.loads(msg.value())["payload"]
        assert letter["topic"] == topics.FEATURES and letter["payload"] == "{not json" and letter["reason"]
    finally:
        service.stop()


def test_drift_stream_restart_in_the_middle_of_a_window_loses_no_state(
        kafka_bootstrap: str, make_drift: MakeDrift, unique: str) -> None:
    dataset = f"restart-{unique}"
    app_id = f"drift-restart-{unique}"
    first, port = make_drift(app_id)
    first.start()
    try:
        publish(kafka_bootstrap, topics.FEATURES, features(dataset, 160, seed=5, key=dataset))  # one partition: ordered
        reports_of(kafka_bootstrap, dataset, 1)   # the bootstrapped first window
        wait_for(lambda: _events(port, dataset) == 160, "160 events applied")
    finally:
        first.stop()
    second, _ = make_drift(app_id, port=port)
    second.start()
    try:
        assert _events(port, dataset) == 160          # recovered from the changelog, not re-read
        publish(kafka_bootstrap, topics.FEATURES, features(dataset, 40, start=160, seed=6, key=dataset))
        _, w1 = reports_of(kafka_bootstrap, dataset, 2)
        assert w1["report_id"] == f"{dataset}-w1"
        [offsets] = w1["offsets"]
        assert offsets["end_offset"] - offsets["start_offset"] == 100
        x_ks = next(r for r in w1["results"] if r["feature"] == "x" and r["test"] == "ks")
        assert x_ks["sample_size"] == 100
        assert datetime.fromisoformat(w1["window_start"]) == (T0 + timedelta(seconds=100))
        assert datetime.fromisoformat(w1["window_end"]) == (T0 + timedelta(seconds=199))
        assert _events(port, dataset) == 200
    finally:
        second.stop()


def _events(port: int, dataset: str) -> int | None:
    for d in get(f"http://127.0.0.1:{port}/v1/drift/status")["datasets"]:
        if d["dataset"] == dataset:
            return int(d["events"])
    return None

