"""The idempotency ledger: the outcome of every retrain command, rebuilt from the outcome topics.

A command id that has an outcome (``training.training-completed.v1`` or
``training.training-failed.v1``) is done: a redelivered or repeated command is acknowledged
without training again. The outcome topics are the source of truth, so every replica and every
restart sees the same ledger. A crash after registering but before publishing the outcome is
covered one level down: the registry version records its command id, and the trainer reuses it.
"""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition
from schemas.envelope import Event
from schemas.training import TrainingCompletedV1, TrainingFailedV1

from trainer.errors import BrokerUnavailable
from trainer.kafka import build_reader, decode_outcome

log = logging.getLogger(__name__)

Outcome = TrainingCompletedV1 | TrainingFailedV1

_NO_LEADER_YET = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                  KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION}
"""Answers about a topic created a moment ago, before its leaders are elected: retried."""


class Ledger:
    """Outcomes by command id, in memory; :class:`KafkaLedger` fills it from Kafka."""

    def __init__(self) -> None:
        self._outcomes: dict[str, Outcome] = {}
        self._lock = threading.Lock()

    def get(self, command_id: str) -> Outcome | None:
        """The outcome of ``command_id``, if it has one."""
        with self._lock:
            return self._outcomes.get(command_id)

    def record(self, outcome: Outcome) -> None:
        """Remember ``outcome`` (the first outcome of a command wins)."""
        with self._lock:
            self._outcomes.setdefault(outcome.command_id, outcome)

    def __len__(self) -> int:
        with self._lock:
            return len(self._outcomes)


class KafkaLedger(Ledger):
    """A ledger loaded from the outcome topics at start-up and kept in step by a background thread."""

    def __init__(self, bootstrap: str, *, completed_topic: str, failed_topic: str) -> None:
        super().__init__()
        self._bootstrap = bootstrap
        self._types: dict[str, type[Event]] = {completed_topic: TrainingCompletedV1, failed_topic: TrainingFailedV1}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer = build_reader(bootstrap, "ledger")

    def load(self, timeout_s: float) -> None:
        """Read both topics to their current end, then follow them.

        Raises:
            BrokerUnavailable: the topics could not be read to their end in time.

        """
        consumer = self._consumer
        deadline = time.monotonic() + timeout_s
        try:
            ends = self._ends(deadline)
            consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for (t, p) in ends])
            pending = {key for key, high in ends.items() if high > 0}
            while pending:
                if time.monotonic() > deadline:
                    raise BrokerUnavailable(f"could not read the outcome topics to their end within {timeout_s}s")
                msg = consumer.poll(0.2)
                if msg is None:
                    continue
                key = (msg.topic() or "", msg.partition() or 0)
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(key)
                    continue
                self._apply(msg.topic() or "", msg.value())
                if (msg.offset() or 0) + 1 >= ends[key]:
                    pending.discard(key)
        except (KafkaException, KeyError) as exc:
            raise BrokerUnavailable(f"could not read the outcome topics: {exc}") from exc
        log.info("ledger loaded", extra={"outcomes": len(self)})
        self._thread = threading.Thread(target=self._follow, name="trainer-ledger", daemon=True)
        self._thread.start()

    def _ends(self, deadline: float) -> dict[tuple[str, int], int]:
        """The end offset of every partition of the outcome topics.

        The lifespan creates the topics on a fresh cluster a moment before: until their leaders
        are elected the broker answers "not leader", which is retried here up to ``deadline``
        rather than failing the start-up.
        """
        while True:
            try:
                ends: dict[tuple[str, int], int] = {}
                for topic in self._types:
                    wait = max(deadline - time.monotonic(), 0.1)
                    for p in self._consumer.list_topics(topic, timeout=wait).topics[topic].partitions:
                        high = self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=wait)[1]
                        ends[(topic, p)] = high
                return ends
            except KafkaException as exc:
                if exc.args[0].code() not in _NO_LEADER_YET or time.monotonic() > deadline:
                    raise
            time.sleep(0.2)

    def _apply(self, topic: str, value: bytes | None) -> None:
        outcome = decode_outcome(value, self._types[topic])
        if outcome is not None:
            self.record(outcome)

    def _follow(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            self._apply(msg.topic() or "", msg.value())

    def close(self) -> None:
        """Stop following and close the consumer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._consumer.close()
