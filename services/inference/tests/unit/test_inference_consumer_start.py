"""A replaying consumer whose start meets broker trouble retries instead of stopping for good."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from inference.kafka import EventConsumer
from schemas.envelope import Envelope
from schemas.registry import RolloutChangedV1
from tributary_kit.codec import encode_event

TOPIC = "registry.rollout-changed.v1"


class _Message:
    def __init__(self, value: bytes, offset: int) -> None:
        self._value, self._offset = value, offset

    def error(self) -> None:
        return None

    def value(self) -> bytes:
        return self._value

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"m/champion"


class _Consumer:
    """One partition holding one event; reading its watermarks fails ``failures`` times first, as a
    partition whose leader is still being elected does (NOT_LEADER_FOR_PARTITION)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.assigned: list[TopicPartition] = []
        event = RolloutChangedV1(model_name="m", alias="champion", version=1, changed_by="t", reason="t",
                                 changed_at=datetime.now(UTC))
        self.pending = [_Message(encode_event(event, event_id=str(uuid.uuid4()), source="registry",
                                              occurred_at=datetime.now(UTC)), 0)]

    def list_topics(self, topic: str, timeout: float) -> Any:
        partition = type("P", (), {"error": None})()
        meta = type("T", (), {"error": None, "partitions": {0: partition}})()
        return type("M", (), {"topics": {topic: meta}})()

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        if self.failures:
            self.failures -= 1
            raise KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))
        return 0, 1

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = partitions

    def consume(self, n: int, timeout: float) -> list[_Message]:
        if not self.assigned:
            raise AssertionError("consume before assign")
        out, self.pending = self.pending, []
        if not out:
            import time
            time.sleep(timeout / 10)
        return out

    def close(self) -> None:
        pass


async def test_a_replaying_consumer_retries_its_start_until_the_partitions_can_be_read() -> None:
    handled: list[Envelope[RolloutChangedV1]] = []

    async def handle(envelopes: list[Envelope[RolloutChangedV1]]) -> None:
        handled.extend(envelopes)

    fake = _Consumer(failures=3)
    consumer = EventConsumer(fake, topic=TOPIC, payload_type=RolloutChangedV1, handle=handle,  # type: ignore[arg-type]
                             producer=None, replay=True, name="rollout", retry_backoff_s=0.01)  # type: ignore[arg-type]
    task = asyncio.create_task(consumer.run())
    try:
        await asyncio.wait_for(consumer.caught_up.wait(), 5)
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 5)
    assert fake.failures == 0
    assert [e.payload.version for e in handled] == [1]
