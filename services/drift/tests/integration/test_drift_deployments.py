"""Two drift deployments on one cluster read the same feature events and publish reports with the
same ids (``<dataset>-w<index>``) for their own windows: each record names its deployment in a
header, so one deployment's reports are found exactly.

This is what the reliability ledger (K4) saw as "window ids running ahead after kill -9": the
session's closed-loop drift (windows of 60) was still consuming the shared feature topic while
the ledger's drift (windows of 100) ran, and the ledger read every report keyed by its dataset:
1200 events gave the ledger's w0..w11 and the other deployment's w0..w19.
"""

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
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from drift.kafka import APP_ID_HEADER
from schemas.ingest import FeatureEventV1
from tributary_kit.codec import encode_event

from deploy.localstack import ServiceProcess
from schemas import topics

pytestmark = pytest.mark.integration

MakeDrift = Callable[..., tuple[ServiceProcess, int]]
T0 = datetime(2026, 3, 1, tzinfo=UTC)
TOTAL = 300


def publish(bootstrap: str, dataset: str, n: int) -> None:
    """``n`` feature events keyed by the dataset (one partition)."""
    rng = np.random.default_rng(5)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i in range(n):
        event = FeatureEventV1(event_id=f"{dataset}-{i}", dataset=dataset, entity_id=f"e{i}",
                               event_time=T0 + timedelta(seconds=i), features={"x": float(rng.normal())})
        producer.produce(topics.FEATURES, key=dataset,
                         value=encode_event(event, event_id=uuid.uuid4().hex, source="test", occurred_at=T0))
    assert producer.flush(30) == 0


def events_applied(port: int, dataset: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/drift/status", timeout=5) as r:
            status = json.loads(r.read())
    except OSError:
        return -1
    return next((int(d["events"]) for d in status["datasets"] if d["dataset"] == dataset), 0)


def reports(bootstrap: str, dataset: str) -> list[tuple[str | None, dict[str, Any]]]:
    """(app id header, payload) of every report of ``dataset``, from the beginning of the topic to its end."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"deployments-{uuid.uuid4()}",
                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topics.DRIFT_REPORTS, timeout=10).topics[topics.DRIFT_REPORTS].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topics.DRIFT_REPORTS, p), timeout=10)[1]
                for p in partitions}
        consumer.assign([TopicPartition(topics.DRIFT_REPORTS, p, OFFSET_BEGINNING) for p in partitions])
        position = {p: -1 for p in partitions}
        found: list[tuple[str | None, dict[str, Any]]] = []
        deadline = time.monotonic() + 60
        while any(position[p] + 1 < ends[p] for p in partitions):
            assert time.monotonic() < deadline, f"could not read {topics.DRIFT_REPORTS} up to {ends}"
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            partition, offset = msg.partition(), msg.offset()
            assert partition is not None and offset is not None
            position[partition] = offset
            if msg.key() == dataset.encode():
                app = dict(msg.headers() or []).get(APP_ID_HEADER)
                payload = json.loads(msg.value() or b"{}")["payload"]
                found.append((app.decode() if isinstance(app, bytes) else app, payload))
        return found
    finally:
        consumer.close()


def test_each_report_names_the_deployment_that_published_it(
        kafka_bootstrap: str, make_drift: MakeDrift, unique: str, tmp_path: Any) -> None:
    dataset = f"deployments-{unique}"
    ours_id, other_id = f"drift-ours-{unique}", f"drift-other-{unique}"
    ours, ours_port = make_drift(ours_id, DRIFT_WINDOW_SIZE="100", DRIFT_STATE_DIR=str(tmp_path / "ours"))
    other, other_port = make_drift(other_id, DRIFT_WINDOW_SIZE="60", DRIFT_STATE_DIR=str(tmp_path / "other"))
    ours.start()
    try:
        other.start()
        try:
            publish(kafka_bootstrap, dataset, TOTAL)
            deadline = time.monotonic() + 120
            while not (events_applied(ours_port, dataset) >= TOTAL and events_applied(other_port, dataset) >= TOTAL):
                if time.monotonic() > deadline:
                    pytest.fail(f"both deployments to count {TOTAL} events", pytrace=False)
                time.sleep(0.1)
            # the last window's report is published right after the event that closed it is counted
            wanted = {ours_id: {f"{dataset}-w{i}" for i in range(TOTAL // 100)},
                      other_id: {f"{dataset}-w{i}" for i in range(TOTAL // 60)}}
            deadline = time.monotonic() + 60
            while True:
                found = reports(kafka_bootstrap, dataset)
                by_app: dict[str | None, set[str]] = {}
                for app, payload in found:
                    by_app.setdefault(app, set()).add(payload["report_id"])
                if all(by_app.get(app, set()) >= ids for app, ids in wanted.items()) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        finally:
            other.stop()
    finally:
        ours.stop()

    # by key alone the two deployments' reports are one set, running ahead of either's windows
    assert {p["report_id"] for _, p in found} == wanted[other_id]
    assert set(by_app) == {ours_id, other_id}, sorted(by_app, key=str)
    assert by_app[ours_id] == wanted[ours_id]
    assert by_app[other_id] == wanted[other_id]
    sizes: dict[str | None, set[int]] = {}
    for app, payload in found:     # each deployment's windows are its own size
        sizes.setdefault(app, set()).update(r["sample_size"] for r in payload["results"]
                                            if r["feature"] == "x" and r["test"] == "ks")
    assert sizes == {ours_id: {100}, other_id: {60}}, sizes
