"""Trainer: rows/s rebuilding a training window from Kafka against a raw consumer reading the same
ranges of the same topics in the same run, and training wall time for 100k rows.

The window rebuild resolves times to offsets, reads the feature and label topics, parses each
record's fields, drops duplicates and joins labels (half inline, half as label events). The raw
consumer assigns the same offset ranges and only counts the records (no parsing): the ceiling
of what a reader can do. Training: the default network and settings on 100k rows with one CPU
thread (the reproducible mode), early stopping on, so the figure includes the epochs it needs.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from schemas.dataset import DatasetSpec
from schemas.envelope import Envelope
from schemas.ingest import FeatureEventV1, LabelEventV1
from schemas.topics import CATALOGUE, FEATURES, LABELS
from schemas.training import OffsetRange, TrainingWindow
from trainer.table import build_table
from trainer.training import FitConfig, fit
from trainer.window import WindowReader
from tributary_kit.admin import ensure_topics
from tributary_kit.codec import encode

from deploy.localstack import Broker

SPEC = DatasetSpec.model_validate({
    "name": "bench",
    "features": [{"name": f"f{i}", "type": "numeric"} for i in range(8)]
    + [{"name": "segment", "type": "categorical", "categories": ["a", "b", "c", "d"]}],
    "label": {"type": "binary"},
})


def publish(bootstrap: str, n: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                         "linger.ms": 20, "compression.type": "lz4", "queue.buffering.max.messages": 1_000_000})
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    now = datetime.now(UTC)
    for i in range(n):
        features: dict[str, float | int | str | None] = {f"f{j}": ((i * 7 + j * 13) % 1000) / 100 for j in range(8)}
        features["segment"] = "abcd"[i % 4]
        label = int((features["f0"] or 0) + (features["f1"] or 0) > 10)  # type: ignore[operator]
        event_id = f"b-{i}"
        entity = f"c-{i % 10_000}"
        feature = FeatureEventV1(event_id=event_id, dataset="bench", entity_id=entity,
                                 event_time=t0 + timedelta(seconds=i), features=features,
                                 label=label if i % 2 else None)
        for topic, payload in ((FEATURES, feature),) + (() if i % 2 else ((LABELS, LabelEventV1(
                event_id=f"l-{i}", dataset="bench", entity_id=entity, event_time=t0 + timedelta(seconds=i),
                label=label, feature_event_id=event_id)),)):
            value = encode(Envelope.wrap(payload, event_id=str(uuid.uuid4()), source="bench", occurred_at=now))
            while True:
                try:
                    producer.produce(topic, value, entity)
                    break
                except BufferError:
                    producer.poll(0.01)
        producer.poll(0)
    assert producer.flush(120) == 0


def raw_read(bootstrap: str, ranges: list[OffsetRange]) -> tuple[int, float]:
    """Records and seconds for a plain consumer reading exactly ``ranges``."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-raw-{uuid.uuid4()}",
                         "enable.auto.commit": False, "fetch.max.bytes": 64 * 1024 * 1024,
                         "max.partition.fetch.bytes": 16 * 1024 * 1024})
    todo = {(r.topic, r.partition): r.end_offset for r in ranges if r.end_offset > r.start_offset}
    started = time.perf_counter()
    consumer.assign([TopicPartition(r.topic, r.partition, r.start_offset) for r in ranges
                     if r.end_offset > r.start_offset])
    count = 0
    while todo:
        for msg in consumer.consume(10_000, 0.5):
            if msg.error() is not None:
                continue
            key = (msg.topic() or "", msg.partition() or 0)
            if key in todo and (msg.offset() or 0) < todo[key]:
                count += 1
                if (msg.offset() or 0) + 1 >= todo[key]:
                    del todo[key]
    elapsed = time.perf_counter() - started
    consumer.close()
    return count, elapsed


def run(*, quick: bool = False) -> list[tuple[str, str, str, str, str]]:
    n, rounds = (20_000, 1) if quick else (100_000, 3)
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        broker = Broker(Path(tmp) / "kafka")
        broker.start()
        try:
            ensure_topics(broker.bootstrap, CATALOGUE.values())
            publish(broker.bootstrap, n)
            reader = WindowReader(broker.bootstrap, features_topic=FEATURES, labels_topic=LABELS, timeout_s=300)
            ours: list[float] = []
            raw: list[float] = []
            data = None
            for _ in range(rounds):
                started = time.perf_counter()
                window = reader.resolve(TrainingWindow())
                data = reader.read("bench", window)
                elapsed = time.perf_counter() - started
                records = data.feature_records + data.label_records
                ours.append(records / elapsed)
                count, raw_elapsed = raw_read(broker.bootstrap, window.offsets)
                assert count == records, (count, records)
                raw.append(count / raw_elapsed)
            assert data is not None and len(data.examples) == n
            table = build_table(data.examples, SPEC, holdout_fraction=0.2, validation_fraction=0.15, min_rows=50,
                                max_categories=1000)
            started = time.perf_counter()
            result = fit(table, FitConfig())
            train_s = time.perf_counter() - started
        finally:
            broker.stop()
    our_rate, raw_rate = statistics.median(ours), statistics.median(raw)
    ratio = our_rate / raw_rate
    print(f"window rebuild: {our_rate:,.0f} records/s ({n:,} feature events + {n // 2:,} label events), "
          f"raw consumer {raw_rate:,.0f} records/s, ratio {ratio:.2f}")
    print(f"training {len(table.train):,} rows ({n:,} in the window): {train_s:.1f} s, {result.epochs} epochs "
          f"({result.stopped_because}), {train_s / max(result.epochs, 1):.2f} s/epoch")
    return [
        ("trainer window rebuild from Kafka, records/s", f"{our_rate:,.0f}", f"{raw_rate:,.0f} (raw consumer)",
         f"{ratio:.2f}", ">= 0.3"),
        (f"trainer training wall time, {n:,} rows (1 CPU thread)", f"{train_s:.1f} s ({result.epochs} epochs)",
         "-", "-", "< 300 s"),
    ]
