"""Training windows rebuilt from Kafka: times to offsets, the exact ranges read, labels joined.

Resolution (``offsets_for_times``, on the records' Kafka timestamps):

* feature topic, every partition: ``[first offset at or after start_time, first offset at or
  after end_time)``; no start time means the log start, no end time the end of the log now;
* label topic, every partition: from the first offset at or after ``start_time`` to the end of
  the log now, since labels arrive after their features.

The resolved ranges are what the model records. A command that carries offsets is replayed
from exactly those, so the same offsets and seed give the same training set and model bytes.

Join: duplicates (same ``event_id``, at-least-once upstream) count once. A label event with a
``feature_event_id`` labels that feature event; otherwise it labels the entity's latest feature
event at or before the label's event time. The latest label wins (by event time, then id); a
feature event without a label event keeps its inline label, if any.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from schemas.training import OffsetRange, TrainingWindow

from trainer.errors import BrokerUnavailable, EmptyWindow, InvalidCommand
from trainer.kafka import (
    FeatureRow,
    LabelRow,
    Unreadable,
    build_reader,
    feature_row,
    label_row,
    prediction_features,
)
from trainer.table import Example

log = logging.getLogger(__name__)

Row = FeatureRow | LabelRow


@dataclass(frozen=True, slots=True)
class WindowData:
    """The labelled rows of a window and what reading it found."""

    window: TrainingWindow
    examples: list[Example]
    feature_records: int
    label_records: int
    feature_events: int
    duplicates: int
    unreadable: int
    unlabelled: int
    labels_unmatched: int


class WindowReader:
    """Reads windows of one dataset's feature and label topics from a Kafka cluster."""

    def __init__(self, bootstrap: str, *, features_topic: str, labels_topic: str, timeout_s: float = 120.0,
                 batch_size: int = 10_000) -> None:
        self.bootstrap = bootstrap
        self.features_topic = features_topic
        self.labels_topic = labels_topic
        self.timeout_s = timeout_s
        self.batch_size = batch_size

    # -- resolution ---------------------------------------------------------------------------------

    def resolve(self, window: TrainingWindow, *, now: datetime | None = None) -> TrainingWindow:
        """``window`` with its offsets; a window that has offsets already is returned as it is.

        Raises:
            InvalidCommand: the given offsets name other topics.
            BrokerUnavailable: the broker did not answer.

        """
        if window.offsets:
            unknown = {r.topic for r in window.offsets} - {self.features_topic, self.labels_topic}
            if unknown:
                raise InvalidCommand(f"the window's offsets name topics the trainer does not read: {sorted(unknown)}")
            return window
        now = now or datetime.now(UTC)
        end_time = window.end_time or (max(now, window.start_time) if window.start_time else now)
        consumer = build_reader(self.bootstrap, "resolve")
        try:
            ranges: list[OffsetRange] = []
            for topic, until in ((self.features_topic, end_time), (self.labels_topic, None)):
                partitions = self._partitions(consumer, topic)
                marks = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=self.timeout_s)
                         for p in partitions}
                lows = {p: max(int(low), 0) for p, (low, _) in marks.items()}
                highs = {p: int(high) for p, (_, high) in marks.items()}
                starts = self._offsets_at(consumer, topic, window.start_time, highs) if window.start_time else lows
                ends = self._offsets_at(consumer, topic, until, highs) if until else highs
                ranges += [OffsetRange(topic=topic, partition=p, start_offset=max(starts[p], lows[p]),
                                       end_offset=max(starts[p], lows[p], ends[p])) for p in partitions]
        except KafkaException as exc:
            raise BrokerUnavailable(f"could not resolve the window's offsets: {exc}") from exc
        finally:
            consumer.close()
        return TrainingWindow(start_time=window.start_time, end_time=end_time, offsets=ranges)

    def _partitions(self, consumer: Consumer, topic: str) -> list[int]:
        entry = consumer.list_topics(topic, timeout=self.timeout_s).topics.get(topic)
        if entry is None or entry.error is not None:
            raise BrokerUnavailable(f"topic {topic} is not available: {entry.error if entry else 'missing'}")
        return sorted(entry.partitions)

    def _offsets_at(self, consumer: Consumer, topic: str, at: datetime, highs: dict[int, int]) -> dict[int, int]:
        """Per partition: the first offset whose timestamp is at or after ``at`` (the log end when none is)."""
        ms = int(at.timestamp() * 1000)
        found = consumer.offsets_for_times([TopicPartition(topic, p, ms) for p in highs], timeout=self.timeout_s)
        out: dict[int, int] = {}
        for tp in found:
            if tp.error is not None:
                raise BrokerUnavailable(f"offsets_for_times failed on {topic}[{tp.partition}]: {tp.error}")
            # -1: every record is older than ``at``, so the range starts (or ends) at the log end.
            out[tp.partition] = highs[tp.partition] if tp.offset < 0 else int(tp.offset)
        return out

    # -- reading ------------------------------------------------------------------------------------

    def read(self, dataset: str, window: TrainingWindow) -> WindowData:
        """The labelled examples of ``dataset`` in the resolved ``window``.

        Raises:
            EmptyWindow: the ranges hold no feature event of the dataset.
            InvalidCommand: a range is no longer (or not yet) in the log.
            BrokerUnavailable: the broker did not answer, or the ranges could not be read in time.

        """
        parsers: dict[str, Callable[[bytes | None], Row | None]] = {
            self.features_topic: lambda raw: feature_row(raw, dataset),
            self.labels_topic: lambda raw: label_row(raw, dataset),
        }
        # One consumer reads both topics at once: one connection, one set of fetches.
        rows, counts, unreadable = self._read(list(window.offsets), parsers)
        features = [r for r in rows if isinstance(r, FeatureRow)]
        labels = [r for r in rows if isinstance(r, LabelRow)]
        f_records, l_records = counts.get(self.features_topic, 0), counts.get(self.labels_topic, 0)
        if not features:
            raise EmptyWindow(f"no feature events of dataset {dataset!r} in the window "
                              f"{_describe(window)}; widen the window or check that ingest receives data")
        examples, duplicates, unlabelled, unmatched = join(features, labels)
        return WindowData(window=window, examples=examples, feature_records=f_records, label_records=l_records,
                          feature_events=len(features) - duplicates, duplicates=duplicates, unreadable=unreadable,
                          unlabelled=unlabelled, labels_unmatched=unmatched)

    def _read(self, ranges: list[OffsetRange], parsers: dict[str, Callable[[bytes | None], Row | None]],
              ) -> tuple[list[Row], dict[str, int], int]:
        """Rows parsed from ``ranges`` in (topic, partition, offset) order, records read per topic, unreadable."""
        todo = {(r.topic, r.partition): r for r in ranges if r.end_offset > r.start_offset}
        counts: dict[str, int] = defaultdict(int)
        if not todo:
            return [], counts, 0
        consumer = build_reader(self.bootstrap, "window")
        rows: dict[tuple[str, int], list[Row]] = defaultdict(list)
        unreadable = 0
        try:
            for (topic, p), r in todo.items():
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=self.timeout_s)
                if r.start_offset < low or r.end_offset > high:
                    raise InvalidCommand(f"{topic}[{p}] offsets {r.start_offset}..{r.end_offset} are not all in "
                                         f"the log (it holds {low}..{high}); the window can no longer be replayed")
            consumer.assign([TopicPartition(t, p, r.start_offset) for (t, p), r in todo.items()])
            pending = set(todo)
            deadline = time.monotonic() + self.timeout_s
            while pending:
                if time.monotonic() > deadline:
                    raise BrokerUnavailable(f"could not read {sorted(pending)} to their end offsets within "
                                            f"{self.timeout_s}s")
                for msg in consumer.consume(self.batch_size, 0.1):
                    key = (msg.topic() or "", msg.partition() or 0)
                    if key not in pending:
                        continue
                    end = todo[key].end_offset
                    offset = msg.offset() or 0
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF and offset >= end:
                            pending.discard(key)
                        elif err.code() != KafkaError._PARTITION_EOF:
                            log.warning("window read error", extra={"error": err.str()})
                        continue
                    if offset >= end:
                        pending.discard(key)
                        consumer.pause([TopicPartition(*key)])
                        continue
                    counts[key[0]] += 1
                    try:
                        row = parsers[key[0]](msg.value())
                    except Unreadable:
                        unreadable += 1
                        row = None
                    if row is not None:
                        rows[key].append(row)
                    if offset + 1 >= end:
                        pending.discard(key)
                        consumer.pause([TopicPartition(*key)])
        except KafkaException as exc:
            raise BrokerUnavailable(f"reading the window failed: {exc}") from exc
        finally:
            consumer.close()
        ordered = [row for key in sorted(rows) for row in rows[key]]
        return ordered, counts, unreadable


def recent_requests(bootstrap: str, topic: str, model_name: str, count: int, *, scan: int = 2000,
                    timeout_s: float = 30.0) -> list[dict[str, object]]:
    """The request features of up to ``count`` recent predictions of ``model_name``.

    Reads the last ``scan`` records of every partition of the predictions topic (a missing topic
    or an empty one gives an empty list) and keeps the newest ``count`` that match.
    """
    consumer = build_reader(bootstrap, "samples")
    found: list[tuple[int, int, dict[str, object]]] = []
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return []
        ranges = {}
        for p in sorted(metadata.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            if high > low:
                ranges[(topic, p)] = (max(low, high - scan), high)
        if not ranges:
            return []
        consumer.assign([TopicPartition(t, p, start) for (t, p), (start, _) in ranges.items()])
        pending = set(ranges)
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                key = (msg.topic() or "", msg.partition() or 0)
                offset = msg.offset() or 0
                if msg.error() is None:
                    features = prediction_features(msg.value(), model_name)
                    if features is not None:
                        found.append((msg.timestamp()[1], offset, features))
                if offset + 1 >= ranges[key][1] or (msg.error() is not None and offset >= ranges[key][1]):
                    pending.discard(key)
    except KafkaException as exc:
        raise BrokerUnavailable(f"could not read recent predictions from {topic}: {exc}") from exc
    finally:
        consumer.close()
    found.sort(key=lambda item: (item[0], item[1]))
    return [features for _, _, features in found[-count:]]


def join(features: Iterable[FeatureRow], labels: Iterable[LabelRow]) -> tuple[list[Example], int, int, int]:
    """Labelled examples from feature and label rows (see the module docs for the rules).

    Returns:
        The examples ordered by (event time, event id), duplicates dropped, feature events left
        without any label, and label events that matched no feature event.

    >>> f = [FeatureRow("f1", "a", 10.0, {"x": 1}, None), FeatureRow("f2", "a", 20.0, {"x": 2}, 1),
    ...      FeatureRow("f1", "a", 10.0, {"x": 1}, None)]
    >>> l = [LabelRow("l1", "a", 15.0, 0, None), LabelRow("l2", "b", 15.0, 1, None)]
    >>> examples, duplicates, unlabelled, unmatched = join(f, l)
    >>> [(e.event_id, e.label) for e in examples], duplicates, unlabelled, unmatched
    ([('f1', 0), ('f2', 1)], 1, 0, 1)
    """
    unique: dict[str, FeatureRow] = {}
    duplicates = 0
    for row in features:
        if row.event_id in unique:
            duplicates += 1
            continue
        unique[row.event_id] = row
    by_entity: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for row in unique.values():
        by_entity[row.entity_id].append((row.event_time, row.event_id))
    for entries in by_entity.values():
        entries.sort()
    seen_labels: set[str] = set()
    joined: dict[str, object] = {}
    unmatched = 0
    for label in sorted(labels, key=lambda r: (r.event_time, r.event_id)):
        if label.event_id in seen_labels:
            continue
        seen_labels.add(label.event_id)
        target: str | None = None
        if label.feature_event_id is not None and label.feature_event_id in unique:
            target = label.feature_event_id
        elif label.feature_event_id is None:
            entries = by_entity.get(label.entity_id, [])
            i = bisect.bisect_right(entries, (label.event_time, "\uffff"))
            if i > 0:
                target = entries[i - 1][1]
        if target is None:
            unmatched += 1
            continue
        joined[target] = label.label  # later labels overwrite earlier ones
    examples: list[Example] = []
    unlabelled = 0
    for row in sorted(unique.values(), key=lambda r: (r.event_time, r.event_id)):
        value = joined.get(row.event_id, row.label)
        if value is None:
            unlabelled += 1
            continue
        examples.append(Example(row.event_id, row.entity_id, row.event_time, row.features, value))
    return examples, duplicates, unlabelled, unmatched


def _describe(window: TrainingWindow) -> str:
    start = window.start_time.isoformat() if window.start_time else "the log start"
    end = window.end_time.isoformat() if window.end_time else "now"
    return f"{start} .. {end}"
