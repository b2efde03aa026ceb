"""Replay: run the detectors over a past window of the topics and say what they would have flagged.

Nothing is published and no consumer group is joined: the records are read by assignment,
between offsets or times, into a fresh in-memory state, with the thresholds given on the
command line, so thresholds can be calibrated before they change in production::

    tributary-drift-replay --bootstrap 127.0.0.1:9092 --dataset credit --reference-file ref.json
        --from-time 2026-03-01T00:00:00Z --to-time 2026-03-02T00:00:00Z --window-size 500 --alpha 0.01
        --correction bonferroni

Predictions and labels of the same period are replayed too (prediction drift, concept drift),
merged with the features in event-time order.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from schemas.inference import PredictionEventV1
from schemas.ingest import FeatureEventV1, LabelEventV1

from drift.errors import ReplayError
from drift.kafka import PoisonMessage, decode_value
from drift.monitor import DatasetMonitor, MonitorConfig, Observation, error_of
from drift.policy import PolicyConfig
from drift.reference import parse_reference
from schemas import topics


@dataclass(frozen=True, slots=True)
class Record:
    """One input of a replay, in the order the replay applies them."""

    at: datetime
    kind: str            # "features" | "prediction" | "label"
    event: FeatureEventV1 | PredictionEventV1 | LabelEventV1
    topic: str = ""
    partition: int = 0
    offset: int = 0


@dataclass(slots=True)
class ReplayResult:
    """What the detectors flagged, window by window, and when the policy would have fired."""

    windows: list[dict[str, Any]] = field(default_factory=list)
    retrains: list[dict[str, Any]] = field(default_factory=list)


def replay(records: Iterable[Record], *, dataset: str, config: MonitorConfig,
           reference_stats: dict[str, Any] | None, regression: bool = False) -> ReplayResult:
    """Run ``records`` (time-ordered) through a fresh monitor of ``dataset``."""
    monitor = DatasetMonitor(dataset, config, {})
    if reference_stats is not None:
        monitor.set_reference(parse_reference(reference_stats, source="registry", psi_bins=config.psi_bins))
    pending: dict[str, Any] = {}
    result = ReplayResult()
    for r in records:
        if isinstance(r.event, FeatureEventV1):
            outcome = monitor.observe(Observation(dict(r.event.features), r.event.event_time, r.topic, r.partition,
                                                  r.offset, r.event.event_id))
            if outcome is not None:
                rep = outcome.report
                result.windows.append({
                    "window": outcome.window_index, "start": rep.window_start.isoformat(),
                    "end": rep.window_end.isoformat(), "drifted": rep.drifted,
                    "flagged": sorted({f"{x.feature}:{x.test}" for x in rep.results if x.drifted}),
                    "retrain": outcome.retrain, "decision": rep.decision})
                if outcome.retrain:
                    result.retrains.append({"window": outcome.window_index, "at": rep.window_end.isoformat(),
                                            "features": rep.drifted_features})
        elif isinstance(r.event, PredictionEventV1):
            if r.event.route == "champion":
                monitor.observe_prediction(r.event.prediction)
                if r.event.entity_id and r.event.prediction is not None:
                    pending[r.event.entity_id] = r.event.prediction
        elif r.event.entity_id in pending:
            monitor.observe_error(error_of(pending.pop(r.event.entity_id), r.event.label, regression=regression))
    return result


def read_topic(bootstrap: str, topic: str, *, start: dict[int, int] | None = None, end: dict[int, int] | None = None,
               from_time: datetime | None = None, to_time: datetime | None = None) -> list[tuple[int, int, bytes]]:
    """``(partition, offset, value)`` of ``topic`` between offsets (end exclusive) or times.

    Raises:
        ReplayError: the topic does not exist.

    """
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "drift-replay", "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise ReplayError(f"topic {topic!r} does not exist on {bootstrap}")
        parts = sorted(meta.partitions)
        lo = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in parts}
        first = {p: (start or {}).get(p, lo[p][0]) for p in parts}
        last = {p: (end or {}).get(p, lo[p][1]) for p in parts}
        if from_time is not None:
            ts = int(from_time.timestamp() * 1000)
            for tp in consumer.offsets_for_times([TopicPartition(topic, p, ts) for p in parts], timeout=10):
                first[tp.partition] = tp.offset if tp.offset >= 0 else last[tp.partition]
        if to_time is not None:
            ts = int(to_time.timestamp() * 1000)
            for tp in consumer.offsets_for_times([TopicPartition(topic, p, ts) for p in parts], timeout=10):
                if tp.offset >= 0:
                    last[tp.partition] = min(last[tp.partition], tp.offset)
        wanted = {p for p in parts if first[p] < last[p]}
        consumer.assign([TopicPartition(topic, p, first[p]) for p in wanted])
        out: list[tuple[int, int, bytes]] = []
        while wanted:
            msg = consumer.poll(2.0)
            if msg is None:
                break
            if msg.error() is not None:
                continue
            p, o = msg.partition() or 0, msg.offset() or 0
            if o >= last[p]:
                wanted.discard(p)
                continue
            out.append((p, o, msg.value() or b""))
            if o + 1 >= last[p]:
                wanted.discard(p)
        return out
    finally:
        consumer.close()


def _records(bootstrap: str, dataset: str, **bounds: Any) -> list[Record]:
    records: list[Record] = []
    kinds: list[tuple[str, str, type[Any]]] = [(topics.FEATURES, "features", FeatureEventV1),
                                               (topics.PREDICTIONS, "prediction", PredictionEventV1),
                                               (topics.LABELS, "label", LabelEventV1)]
    for topic, kind, cls in kinds:
        topic_bounds = bounds if topic == topics.FEATURES else {k: v for k, v in bounds.items() if "time" in k}
        for p, o, raw in read_topic(bootstrap, topic, **topic_bounds):
            try:
                event = decode_value(raw, cls).payload
            except PoisonMessage:
                continue
            if getattr(event, "dataset", dataset) not in (dataset, None):
                continue
            at = getattr(event, "event_time", None) or event.served_at
            records.append(Record(at, kind, event, topic, p, o))
    records.sort(key=lambda r: r.at)
    return records


def _offsets(text: str | None) -> dict[int, int] | None:
    if not text:
        return None
    return {int(p): int(o) for p, o in (part.split(":") for part in text.split(","))}


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; prints one JSON line per window, then a summary."""
    parser = argparse.ArgumentParser(description="Replay past topics through the drift detectors.")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--reference-file", help="reference statistics JSON (default: bootstrap from data)")
    parser.add_argument("--from-time", type=datetime.fromisoformat)
    parser.add_argument("--to-time", type=datetime.fromisoformat)
    parser.add_argument("--from-offsets", help="feature topic start offsets, e.g. 0:100,1:80,2:95")
    parser.add_argument("--to-offsets", help="feature topic end offsets (exclusive), same form")
    parser.add_argument("--window-size", type=int, default=1000)
    parser.add_argument("--window-step", type=int)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--correction", default="benjamini-hochberg",
                        choices=["benjamini-hochberg", "bonferroni", "none"])
    parser.add_argument("--psi-threshold", type=float, default=0.2)
    parser.add_argument("--js-threshold", type=float, default=0.2)
    parser.add_argument("--consecutive-windows", type=int, default=2)
    parser.add_argument("--clear-windows", type=int, default=3)
    parser.add_argument("--cooldown-s", type=float, default=3600.0)
    parser.add_argument("--regression", action="store_true", help="labels are regression targets")
    args = parser.parse_args(argv)
    config = MonitorConfig(window_size=args.window_size, window_step=args.window_step or args.window_size,
                           alpha=args.alpha, correction=args.correction, psi_threshold=args.psi_threshold,
                           js_threshold=args.js_threshold,
                           policy=PolicyConfig(consecutive=args.consecutive_windows, clear=args.clear_windows,
                                               cooldown_s=args.cooldown_s))
    stats = None
    if args.reference_file:
        with open(args.reference_file) as f:
            stats = json.load(f)
    try:
        records = _records(args.bootstrap, args.dataset, start=_offsets(args.from_offsets),
                           end=_offsets(args.to_offsets), from_time=args.from_time, to_time=args.to_time)
    except ReplayError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    result = replay(records, dataset=args.dataset, config=config, reference_stats=stats,
                    regression=args.regression)
    for w in result.windows:
        print(json.dumps(w))
    print(json.dumps({"windows": len(result.windows), "drifted": sum(w["drifted"] for w in result.windows),
                      "retrains": result.retrains}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
