"""Dataset specs, kept in a compacted Kafka topic and mirrored in memory.

The topic is the source of truth: on start-up the catalogue reads it from the beginning to the
end, and a background thread keeps following it, so every ingest replica (and any other
service) sees the same specs without a database. Registering a spec publishes it and waits for
the broker's acknowledgement before the new spec is used.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from schemas.dataset import DatasetSpec, DatasetSpecRegisteredV1
from schemas.envelope import Envelope
from schemas.topics import DATASET_SPECS
from tributary_kit.codec import PoisonMessage, decode, encode
from tributary_kit.producer import AsyncProducer
from tributary_kit.telemetry import current_traceparent

from ingest import metrics
from ingest.errors import BrokerUnavailable, SpecConflict, UnknownDataset
from ingest.spec_models import BatchValidator, feature_event_types
from ingest.validation import CompiledSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RegisteredSpec:
    """A spec and its revision (1 for the first registration, +1 per replacement)."""

    spec: DatasetSpec
    revision: int
    registered_at: datetime


class SpecCatalogue:
    """The current spec of every dataset, rebuilt from and kept in step with the spec topic."""

    def __init__(self, bootstrap: str, *, topic: str = DATASET_SPECS) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._specs: dict[str, RegisteredSpec] = {}
        self._compiled: dict[str, CompiledSpec] = {}
        self._models: dict[str, Any] = {}  # dataset -> its compiled event type
        self._batch_validator: BatchValidator | None = None
        self._lock = threading.Lock()
        self._register_lock = asyncio.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None
        self.loaded = False

    # -- reading ----------------------------------------------------------------------------------

    def get(self, name: str) -> DatasetSpec | None:
        """The current spec of dataset ``name``, or None."""
        entry = self._specs.get(name)
        return entry.spec if entry else None

    def compiled(self, name: str) -> CompiledSpec | None:
        """The current spec of ``name`` prepared for validation, or None."""
        return self._compiled.get(name)

    def batch_validator(self) -> BatchValidator:
        """Validates JSON arrays of feature events against every current spec in one pass.

        Rebuilt lazily after a spec changes (building costs milliseconds; specs change rarely).
        """
        validator = self._batch_validator
        if validator is None:
            with self._lock:
                models = list(self._models.values())
            validator = BatchValidator(models)
            with self._lock:
                if list(self._models.values()) == models:
                    self._batch_validator = validator
        return validator

    def entry(self, name: str) -> RegisteredSpec:
        """The current spec of ``name`` with its revision.

        Raises:
            UnknownDataset: no spec is registered under ``name``.
        """
        entry = self._specs.get(name)
        if entry is None:
            raise UnknownDataset(f"unknown dataset {name!r}; register its spec first (POST /v1/datasets)")
        return entry

    def all(self) -> list[RegisteredSpec]:
        """Every registered spec, by dataset name."""
        with self._lock:
            return [self._specs[k] for k in sorted(self._specs)]

    # -- writing ----------------------------------------------------------------------------------

    async def register(self, spec: DatasetSpec, producer: AsyncProducer, *, replace: bool,
                       by: str = "api") -> tuple[RegisteredSpec, bool]:
        """Publish ``spec`` and use it once the broker acknowledged it.

        Registering the identical spec again changes nothing (idempotent).

        Returns:
            The registered spec and whether anything changed.

        Raises:
            SpecConflict: a different spec exists and ``replace`` is false.
            BrokerUnavailable: the broker did not acknowledge the spec.
        """
        async with self._register_lock:
            current = self._specs.get(spec.name)
            if current is not None and current.spec == spec:
                return current, False
            if current is not None and not replace:
                raise SpecConflict(f"dataset {spec.name!r} already has a different spec (revision "
                                   f"{current.revision}); replace it with PUT /v1/datasets/{spec.name}")
            revision = (current.revision if current else 0) + 1
            now = datetime.now(UTC)
            event = DatasetSpecRegisteredV1(spec=spec, revision=revision, registered_by=by)
            envelope = Envelope.wrap(event, event_id=str(uuid.uuid4()), source="ingest", occurred_at=now,
                                     traceparent=current_traceparent())
            delivery = await producer.send(self._topic, encode(envelope), key=spec.name)
            if not delivery.ok:
                raise BrokerUnavailable(f"the broker did not store the spec: {delivery.error}",
                                        accepted=[], failed=[spec.name])
            entry = RegisteredSpec(spec, revision, now)
            self._apply(spec.name, entry)
            return entry, True

    def _apply(self, name: str, entry: RegisteredSpec | None) -> None:
        with self._lock:
            current = self._specs.get(name)
            if entry is None:
                self._specs.pop(name, None)
                self._compiled.pop(name, None)
                self._models.pop(name, None)
            elif current is None or entry.revision >= current.revision:
                self._specs[name] = entry
                self._compiled[name] = CompiledSpec(entry.spec)
                self._models.pop(name, None)
                self._models.update(feature_event_types([entry.spec]))
            self._batch_validator = None
        metrics.DATASETS.set(len(self._specs))

    # -- following the topic ----------------------------------------------------------------------

    def load(self, timeout_s: float) -> None:
        """Read the topic from the beginning to its current end, then follow it in the background.

        Raises:
            BrokerUnavailable: the broker did not answer, or the topic could not be read to its
                end within ``timeout_s``.
        """
        consumer = Consumer({
            "bootstrap.servers": self._bootstrap,
            # No offsets are committed: every replica reads the whole (compacted) topic.
            "group.id": f"ingest-specs-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        })
        self._consumer = consumer
        deadline = time.monotonic() + timeout_s
        try:
            metadata = consumer.list_topics(self._topic, timeout=timeout_s)
        except KafkaException as exc:
            raise BrokerUnavailable(f"broker at {self._bootstrap} did not answer: {exc}",
                                    accepted=[], failed=[]) from exc
        partitions = list(metadata.topics[self._topic].partitions)
        consumer.assign([TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in partitions])
        ends = {p: self._end_offset(consumer, p, deadline) for p in partitions}
        pending = {p for p, high in ends.items() if high > 0}
        while pending:
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"could not read {self._topic} to its end within {timeout_s}s",
                                        accepted=[], failed=[])
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition() or 0)
                continue
            self._handle(msg.key(), msg.value(), msg.offset())
            if (msg.offset() or 0) + 1 >= ends[msg.partition() or 0]:
                pending.discard(msg.partition() or 0)
        self.loaded = True
        log.info("dataset specs loaded", extra={"datasets": len(self._specs)})
        self._thread = threading.Thread(target=self._follow, name="ingest-spec-follower", daemon=True)
        self._thread.start()

    def _end_offset(self, consumer: Consumer, partition: int, deadline: float) -> int:
        # Right after the topic is created its leader may not have taken over yet: retry.
        while True:
            try:
                _, high = consumer.get_watermark_offsets(TopicPartition(self._topic, partition), timeout=5)
                return int(high)
            except KafkaException as exc:
                if time.monotonic() > deadline:
                    raise BrokerUnavailable(f"could not read the end of {self._topic}: {exc}",
                                            accepted=[], failed=[]) from exc
                time.sleep(0.2)

    def _follow(self) -> None:
        assert self._consumer is not None
        while not self._stop.is_set():
            msg = self._consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            self._handle(msg.key(), msg.value(), msg.offset())

    def _handle(self, key: bytes | str | None, value: bytes | None, offset: int | None) -> None:
        name = key.decode() if isinstance(key, bytes) else key
        if value is None:  # tombstone: the dataset was removed
            if name:
                self._apply(name, None)
            return
        try:
            envelope = decode(value, DatasetSpecRegisteredV1)
        except PoisonMessage as exc:
            # The record stays in the topic for inspection; applying it is impossible.
            metrics.SPEC_RECORDS_UNREADABLE.inc()
            log.error("unreadable dataset spec record", extra={"offset": offset, "reason": str(exc)})
            return
        event = envelope.payload
        self._apply(event.spec.name, RegisteredSpec(event.spec, event.revision, envelope.occurred_at))

    def close(self) -> None:
        """Stop following the topic."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._consumer is not None:
            self._consumer.close()
