"""``kill -9`` of the drift process in the middle of the stream: after the restart the windows,
their numbering and their reports are exactly those of an uninterrupted run.

The uninterrupted run is computed here, in process, by the same :class:`DriftService` over a
dict, fed the very records the stream read (read back from the topic in offset order, one
partition so the order is the topic's). The process is killed while it is consuming, with
table writes buffered and offsets not yet committed, several times.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from drift.kafka import APP_ID_HEADER, decode_value
from drift.monitor import MonitorConfig
from drift.service import DriftService, RecordPosition
from schemas.drift import DriftReportV1
from schemas.ingest import FeatureEventV1
from schemas.training import RetrainCommandV1
from tributary_kit.codec import encode_event

from deploy.localstack import ServiceProcess
from schemas import topics
from tests.fixtures.kafka import consume

pytestmark = pytest.mark.integration

MakeDrift = Callable[..., tuple[ServiceProcess, int]]
WINDOW, STEP = 50, 20
TOTAL = 900


T0 = datetime(2026, 3, 1, tzinfo=UTC)


def feature_events(dataset: str, n: int) -> list[FeatureEventV1]:
    """``n`` events of a numeric and a categorical feature, the numeric one shifting half way."""
    rng = np.random.default_rng(11)
    return [FeatureEventV1(event_id=f"{dataset}-{i}", dataset=dataset, entity_id=f"e{i}",
                           event_time=T0 + timedelta(seconds=i),
                           features={"x": float(rng.normal(0.0 if i < n // 2 else 1.0)),
                                     "c": str(rng.choice(["a", "b", "c"]))})
            for i in range(n)]


def publish(bootstrap: str, dataset: str, events: list[FeatureEventV1]) -> None:
    """Every event keyed by the dataset (one partition: one order)."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for e in events:
        producer.produce(topics.FEATURES, key=dataset, value=encode_event(e, event_id=uuid.uuid4().hex, source="test",
                                                                         occurred_at=T0))
    assert producer.flush(30) == 0


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


class Collect:
    """A publisher that keeps what it is given (the uninterrupted run's reports)."""

    def __init__(self) -> None:
        self.reports: list[DriftReportV1] = []
        self.commands: list[RetrainCommandV1] = []

    async def report(self, report: DriftReportV1) -> None:
        self.reports.append(report)

    async def command(self, command: RetrainCommandV1) -> None:
        self.commands.append(command)


class NoRegistry:
    async def version(self, model_name: str, version: int) -> Any:
        raise AssertionError("no registry lookups in this test")


def events_applied(port: int, dataset: str) -> int:
    try:
        status = get(f"http://127.0.0.1:{port}/v1/drift/status")
    except OSError:
        return -1
    return next((int(d["events"]) for d in status["datasets"] if d["dataset"] == dataset), 0)


def kill9(process: ServiceProcess) -> None:
    assert process.process is not None and process.process.poll() is None, process.tail()
    os.kill(process.process.pid, signal.SIGKILL)
    process.process.wait(10)


def feature_records(bootstrap: str, dataset: str) -> list[tuple[int, int, bytes]]:
    """(partition, offset, value) of every feature record keyed by ``dataset``, in offset order."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"kill9-reader-{dataset}",
                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topics.FEATURES, timeout=10).topics[topics.FEATURES].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topics.FEATURES, p), timeout=10)[1]
                for p in partitions}
        consumer.assign([TopicPartition(topics.FEATURES, p, OFFSET_BEGINNING) for p in partitions])
        position = {p: -1 for p in partitions}
        found: list[tuple[int, int, bytes]] = []
        deadline = time.monotonic() + 60
        while any(position[p] + 1 < ends[p] for p in partitions):
            assert time.monotonic() < deadline, f"could not read {topics.FEATURES} up to {ends}"
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            partition, offset = msg.partition(), msg.offset()
            assert partition is not None and offset is not None
            position[partition] = offset
            if msg.key() == dataset.encode():
                found.append((partition, offset, msg.value() or b""))
        return sorted(found)
    finally:
        consumer.close()


async def uninterrupted(records: list[tuple[int, int, bytes]]) -> list[DriftReportV1]:
    """The reports of a run that was never interrupted, over the same records."""
    out = Collect()
    service = DriftService(MonitorConfig(window_size=WINDOW, window_step=STEP), {}, references=NoRegistry(),
                           publisher=out)
    for partition, offset, raw in records:
        event = decode_value(raw, FeatureEventV1).payload
        await service.on_features(event, RecordPosition(topics.FEATURES, partition, offset))
    return out.reports


async def test_kill_9_mid_window_then_restart_gives_the_windows_of_an_uninterrupted_run(
        kafka_bootstrap: str, make_drift: MakeDrift, unique: str) -> None:
    dataset, app_id = f"kill9-{unique}", f"drift-kill9-{unique}"
    service, port = make_drift(app_id, DRIFT_WINDOW_SIZE=str(WINDOW),
                               DRIFT_WINDOW_STEP=str(STEP), DRIFT_SESSION_TIMEOUT_S="8")
    # Event ids repeat now and then, as a producer resending after a crash makes them.
    events = feature_events(dataset, TOTAL)
    with_duplicates = [e for i, e in enumerate(events) for _ in range(2 if i % 37 == 5 else 1)]
    service.start()
    try:
        publish(kafka_bootstrap, dataset, with_duplicates)
        for at in (130, 370, 610):
            # kill while the stream is busy: table writes buffered, offsets uncommitted
            wait_until(lambda at=at: events_applied(port, dataset) >= at, f"{at} events applied", 120)  # type: ignore[misc]
            kill9(service)
            service.start(180)
        wait_until(lambda: events_applied(port, dataset) >= TOTAL, f"{TOTAL} events applied", 120)
        assert events_applied(port, dataset) == TOTAL

        expected = await uninterrupted(feature_records(kafka_bootstrap, dataset))
        assert len(expected) == (TOTAL - WINDOW) // STEP + 1
        # this deployment's reports (another drift on the cluster publishes the same ids for its own windows)
        published = consume(kafka_bootstrap, topics.DRIFT_REPORTS, count=len(expected),
                            match=lambda m: m.key() == dataset.encode() and published_by(m, app_id), timeout_s=60)
        # ... and nothing after them: read again up to the end, every record counts
        everything = consume_all(kafka_bootstrap, dataset, app_id)
        assert len(everything) >= len(published)
        by_id: dict[str, dict[str, Any]] = {}
        for payload in everything:
            first = by_id.setdefault(payload["report_id"], payload)
            assert _comparable(first) == _comparable(payload), f"{payload['report_id']} published twice, differently"
        assert sorted(by_id, key=_index) == [r.report_id for r in expected]
        for report in expected:
            assert _comparable(by_id[report.report_id]) == _comparable(report.model_dump(mode="json")), report.report_id
    finally:
        service.stop()


def published_by(msg: Any, app_id: str) -> bool:
    """Whether a record was published by the drift deployment ``app_id`` (its header says so)."""
    return bool(dict(msg.headers() or []).get(APP_ID_HEADER) == app_id.encode())


def consume_all(bootstrap: str, dataset: str, app_id: str) -> list[dict[str, Any]]:
    """Every report of ``dataset`` by ``app_id`` on the reports topic (one partition), from the beginning to its end."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"kill9-reports-{dataset}",
                         "enable.auto.commit": False})
    try:
        tp = TopicPartition(topics.DRIFT_REPORTS, 0)
        end = consumer.get_watermark_offsets(tp, timeout=10)[1]
        consumer.assign([TopicPartition(topics.DRIFT_REPORTS, 0, OFFSET_BEGINNING)])
        out: list[dict[str, Any]] = []
        position = -1
        deadline = time.monotonic() + 60
        while position + 1 < end:
            assert time.monotonic() < deadline, f"could not read {topics.DRIFT_REPORTS} up to {end}"
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            position = msg.offset() or 0
            if msg.key() == dataset.encode() and published_by(msg, app_id):
                out.append(json.loads(msg.value() or b"{}")["payload"])
        return out
    finally:
        consumer.close()


def _index(report_id: str) -> int:
    return int(report_id.rsplit("-w", 1)[1])


def _comparable(report: dict[str, Any]) -> dict[str, Any]:
    return DriftReportV1.model_validate(report).model_dump(mode="json")


def wait_until(check: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}", pytrace=False)
        time.sleep(0.02)
