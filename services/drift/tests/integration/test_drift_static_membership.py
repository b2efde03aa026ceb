"""Static group membership: a drift worker killed with ``kill -9`` and restarted under the same
``DRIFT_GROUP_INSTANCE_ID`` takes its partitions back at once, not after the dead member's
session (60 s here, the default), and goes on counting every event once."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Producer
from schemas.ingest import FeatureEventV1
from tributary_kit.codec import encode_event

from deploy.localstack import ServiceProcess
from schemas import topics

pytestmark = pytest.mark.integration

MakeDrift = Callable[..., tuple[ServiceProcess, int]]
T0 = datetime(2026, 3, 1, tzinfo=UTC)
SESSION_S = 60
BACK_WITHIN_S = 25.0
"""Kill to ready again (table recovered, partitions assigned); dynamic membership waits out the session."""


def publish(bootstrap: str, dataset: str, start: int, n: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i in range(start, start + n):
        event = FeatureEventV1(event_id=f"{dataset}-{i}", dataset=dataset, entity_id=f"e{i}",
                               event_time=T0 + timedelta(seconds=i), features={"x": float(i % 13)})
        producer.produce(topics.FEATURES, key=event.entity_id,
                         value=encode_event(event, event_id=uuid.uuid4().hex, source="test", occurred_at=T0))
    assert producer.flush(30) == 0


def events_applied(port: int, dataset: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/drift/status", timeout=5) as r:
            status = json.loads(r.read())
    except OSError:
        return -1
    return next((int(d["events"]) for d in status["datasets"] if d["dataset"] == dataset), 0)


def wait_until(check: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}", pytrace=False)
        time.sleep(0.05)


def test_a_worker_restarted_under_its_group_instance_id_takes_its_partitions_back_at_once(
        kafka_bootstrap: str, make_drift: MakeDrift, unique: str) -> None:
    dataset = f"static-{unique}"
    service, port = make_drift(f"drift-static-{unique}", DRIFT_GROUP_INSTANCE_ID="drift-0",
                               DRIFT_SESSION_TIMEOUT_S=str(SESSION_S))
    service.start()
    try:
        publish(kafka_bootstrap, dataset, 0, 150)
        wait_until(lambda: events_applied(port, dataset) >= 150, "150 events applied", 60)
        assert service.process is not None
        os.kill(service.process.pid, signal.SIGKILL)
        service.process.wait(10)
        killed = time.monotonic()
        publish(kafka_bootstrap, dataset, 150, 150)      # arrives while the worker is down
        service.start(SESSION_S + 30)
        back = time.monotonic() - killed
        wait_until(lambda: events_applied(port, dataset) >= 300, "300 events applied", 60)
        assert events_applied(port, dataset) == 300
        assert back < BACK_WITHIN_S, f"ready again {back:.1f}s after the kill (session {SESSION_S}s)"
    finally:
        service.stop()
