"""The direct-Kafka path: raw producer JSON in, validated events and dead letters out.

At least once: a round of records is validated and published, and its offsets are committed
only after the broker acknowledged every output. When publishing fails the consumer rewinds
to the round's first offsets and tries again after a pause, so nothing is skipped; a crash
between publishing and committing re-publishes the round, and downstream consumers drop the
duplicates by event id.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from schemas.topics import FEATURES_RAW, LABELS_RAW

from ingest import metrics
from ingest.errors import BrokerUnavailable, Overloaded
from ingest.kafka import row_from_record
from ingest.service import IngestService, Row
from ingest.validation import Kind

log = logging.getLogger(__name__)

RAW_TOPICS: dict[str, Kind] = {FEATURES_RAW: "features", LABELS_RAW: "labels"}


class RawValidator:
    """Consumes the raw topics in a consumer group and feeds each round to the ingest core."""

    def __init__(self, consumer: Consumer, service: IngestService, *, batch_size: int, max_record_bytes: int,
                 retry_backoff_s: float = 1.0) -> None:
        self._consumer = consumer
        self._service = service
        self._batch_size = batch_size
        self._max_record_bytes = max_record_bytes
        self._retry_backoff_s = retry_backoff_s
        self._stopping = asyncio.Event()
        self.rounds = 0

    def stop(self) -> None:
        """Finish the current round and stop."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume until :meth:`stop`; the consumer is closed on the way out."""
        self._consumer.subscribe(list(RAW_TOPICS))
        try:
            while not self._stopping.is_set():
                messages = await asyncio.to_thread(self._consumer.consume, self._batch_size, 0.5)
                records = [m for m in messages if self._usable(m)]
                if records:
                    await self._round(records)
        finally:
            await asyncio.to_thread(self._consumer.close)

    def _usable(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return True
        if err.code() != KafkaError._PARTITION_EOF:
            log.warning("raw consumer error", extra={"error": err.str()})
        return False

    async def _round(self, records: list[Message]) -> None:
        by_topic: dict[str, list[Message]] = defaultdict(list)
        for msg in records:
            by_topic[msg.topic() or ""].append(msg)
        try:
            for topic, msgs in by_topic.items():
                kind = RAW_TOPICS[topic]
                rows: list[Row] = [row_from_record(m, kind, self._max_record_bytes) for m in msgs]
                await self._service.ingest(kind, rows, origin="kafka", source_topic=topic)
        except (Overloaded, BrokerUnavailable) as exc:
            metrics.RAW_ROUNDS.labels("retried").inc()
            log.warning("raw round not published; rewinding to retry", extra={"reason": str(exc)})
            await asyncio.to_thread(self._rewind, records)
            await asyncio.sleep(self._retry_backoff_s)
            return
        try:
            await asyncio.to_thread(self._consumer.commit, offsets=_next_offsets(records), asynchronous=False)
        except KafkaException as exc:
            # A rebalance took the partitions away: the new owner re-reads from the last commit.
            log.warning("commit failed; the round will be redelivered", extra={"reason": str(exc)})
        metrics.RAW_ROUNDS.labels("committed").inc()
        self.rounds += 1

    def _rewind(self, records: list[Message]) -> None:
        first: dict[tuple[str, int], int] = {}
        for msg in records:
            key = (msg.topic() or "", msg.partition() or 0)
            offset = msg.offset() or 0
            first[key] = min(first.get(key, offset), offset)
        for (topic, partition), offset in first.items():
            try:
                self._consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:
                log.warning("seek failed", extra={"topic": topic, "partition": partition, "reason": str(exc)})


def _next_offsets(records: list[Message]) -> list[TopicPartition]:
    last: dict[tuple[str, int], int] = {}
    for msg in records:
        key = (msg.topic() or "", msg.partition() or 0)
        last[key] = max(last.get(key, -1), msg.offset() or 0)
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
