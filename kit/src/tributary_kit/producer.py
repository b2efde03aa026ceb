"""An asyncio-friendly Kafka producer that answers only after the broker acknowledged.

librdkafka does the batching and retries; a background thread serves its delivery reports
and hands each result back to the event loop. A send completes when the broker wrote the
record (``acks=all``) or reports why it could not. The producer is idempotent, so librdkafka's
internal retries never duplicate or reorder a record within a partition.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

log = logging.getLogger(__name__)

DURABLE_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "compression.type": "lz4",
    "message.timeout.ms": 30_000,
}
"""Producer settings every service uses unless it overrides them."""


class ProducerError(Exception):
    """Root of the producer's errors."""


class ProducerQueueFull(ProducerError):
    """The local queue stayed full for the whole enqueue timeout: back off and retry.

    ``accepted`` counts the leading records of the batch that were enqueued (and have their
    delivery results in ``results``); the rest were not sent.
    """

    def __init__(self, message: str, results: list[Delivery]) -> None:
        super().__init__(message)
        self.results = results


@dataclass(frozen=True, slots=True)
class Record:
    """One record to send."""

    topic: str
    value: bytes
    key: bytes | str | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the broker said about one record: where it landed, or why it did not."""

    topic: str
    partition: int
    offset: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the broker acknowledged the record."""
        return self.error is None


class _Batch:
    """Collects delivery reports for one batch; resolves its future when all are in."""

    __slots__ = ("future", "lock", "loop", "pending", "results", "sealed")

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.results: list[Delivery | None] = [None] * size
        self.pending = 0
        self.sealed = False
        self.lock = threading.Lock()

    def on_delivery(self, index: int, err: KafkaError | None, msg: Message) -> None:
        # Runs on the poll thread.
        topic, partition, offset = msg.topic() or "", msg.partition(), msg.offset()
        result = Delivery(
            topic,
            -1 if partition is None else partition,
            -1 if offset is None or err is not None else offset,
            None if err is None else err.str(),
        )
        with self.lock:
            self.results[index] = result
            self.pending -= 1
            done = self.sealed and self.pending == 0
        if done:
            self.loop.call_soon_threadsafe(_resolve, self.future)

    def seal(self) -> None:
        """No more records will be added; resolve now if every report is already in."""
        with self.lock:
            self.sealed = True
            done = self.pending == 0
        if done:
            _resolve(self.future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class AsyncProducer:
    """A confluent-kafka producer for asyncio code; one per process, owned by the app lifespan.

    Args:
        config: librdkafka settings; merged over :data:`DURABLE_DEFAULTS`.
        enqueue_timeout_s: how long a send waits for room in a full local queue before it
            raises :class:`ProducerQueueFull`.

    """

    def __init__(self, config: dict[str, Any], *, enqueue_timeout_s: float = 1.0) -> None:
        self._producer = Producer({**DURABLE_DEFAULTS, **config})
        self._enqueue_timeout_s = enqueue_timeout_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="kafka-producer-poll", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    async def send(self, topic: str, value: bytes, key: bytes | str | None = None) -> Delivery:
        """Send one record and wait for the broker's answer."""
        return (await self.send_many([Record(topic, value, key)]))[0]

    async def send_many(self, records: Sequence[Record]) -> list[Delivery]:
        """Send ``records`` in order and wait until the broker answered for every one.

        Returns:
            One :class:`Delivery` per record, in order; check ``ok`` on each.

        Raises:
            ProducerQueueFull: the local queue stayed full; ``results`` holds the deliveries
                of the records that were enqueued before it filled up.

        """
        loop = asyncio.get_running_loop()
        batch = _Batch(loop, len(records))
        produce = self._producer.produce
        full_at: int | None = None
        for index, record in enumerate(records):
            callback = _bind(batch, index)
            deadline: float | None = None
            while True:
                with batch.lock:
                    batch.pending += 1
                try:
                    produce(record.topic, record.value, record.key, on_delivery=callback)
                    break
                except BufferError:
                    with batch.lock:
                        batch.pending -= 1
                    now = time.monotonic()
                    deadline = deadline or now + self._enqueue_timeout_s
                    if now >= deadline:
                        full_at = index
                        break
                    await asyncio.sleep(0.005)
                except KafkaException:
                    with batch.lock:
                        batch.pending -= 1
                    raise
            if full_at is not None:
                break
        batch.seal()
        await batch.future
        if full_at is not None:
            done = [r for r in batch.results[:full_at] if r is not None]
            raise ProducerQueueFull(
                f"producer queue full: {full_at} of {len(records)} records sent, the rest refused", done
            )
        return [r for r in batch.results if r is not None]

    def queue_length(self) -> int:
        """Records waiting in the local queue or in flight to the broker."""
        return len(self._producer)

    def list_topics(self, timeout_s: float) -> set[str]:
        """Names of the topics the broker knows (a metadata round trip: a readiness probe).

        Raises:
            KafkaException: the broker did not answer within ``timeout_s``.

        """
        return set(self._producer.list_topics(timeout=timeout_s).topics)

    def close(self, timeout_s: float = 10.0) -> int:
        """Flush what is queued (up to ``timeout_s``) and stop; returns records left unsent."""
        left: int = self._producer.flush(timeout_s)
        self._stop.set()
        self._thread.join(timeout=5)
        if left:
            log.error("producer closed with undelivered records", extra={"undelivered": left})
        return left


def _bind(batch: _Batch, index: int) -> Any:
    def callback(err: KafkaError | None, msg: Message) -> None:
        batch.on_delivery(index, err, msg)

    return callback
