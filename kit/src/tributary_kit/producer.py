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
from functools import partial
from typing import Any, NamedTuple

from confluent_kafka import KafkaError, Message, Producer

log = logging.getLogger(__name__)

DURABLE_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "compression.type": "lz4",
    "message.timeout.ms": 30_000,
}
"""Producer settings every service uses unless it overrides them."""

_REPORT_INTERVAL_S = 0.001
"""How often a producer that serves delivery reports on its event loop polls while sends wait."""


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


class Record(NamedTuple):
    """One record to send (a tuple: hot paths may pass plain ``(topic, value, key)`` tuples)."""

    topic: str
    value: bytes
    key: bytes | str | None = None


RecordTuple = tuple[str, bytes, bytes | str | None]
"""What :meth:`AsyncProducer.send_batch` takes per record: a :class:`Record` or a plain tuple."""


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


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Sent:
    """What the broker said about a batch of records sent with :meth:`AsyncProducer.send_batch`.

    Cheap on the happy path: per record it keeps only librdkafka's message; :meth:`delivery`
    builds the full answer for one record when a caller needs its partition and offset.
    """

    __slots__ = ("_messages", "errors", "future", "loop", "received", "sent")

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self._messages: list[Message | None] = [None] * size
        self.errors: dict[int, str] = {}
        """Index -> why the broker did not take that record; empty when all were acknowledged."""
        self.received = 0  # written by the delivery-report thread only
        self.sent = -1  # records enqueued; set once every record was handed to librdkafka

    def on_delivery(self, index: int, err: KafkaError | None, msg: Message) -> None:
        """Delivery report of record ``index`` (runs on the thread serving delivery reports)."""
        self._messages[index] = msg
        if err is not None:
            self.errors[index] = err.str()
        self.received += 1
        if self.received == self.sent:
            self.loop.call_soon_threadsafe(_resolve, self.future)

    def seal(self, sent: int) -> None:
        """``sent`` records were enqueued; resolve now if every report is already in.

        Lock-free: only the report thread writes ``received`` and only the event loop writes
        ``sent``; whichever side sees both complete resolves the future (resolving twice is a
        no-op), and under the GIL at least one of them does.
        """
        self.sent = sent
        if self.received == sent:
            _resolve(self.future)

    @property
    def ok(self) -> bool:
        """True when the broker acknowledged every record that was sent."""
        return not self.errors

    def delivery(self, index: int) -> Delivery:
        """Where record ``index`` landed, or why it did not (only for records that were sent)."""
        msg = self._messages[index]
        if msg is None:
            raise IndexError(f"record {index} was not sent")
        error = self.errors.get(index)
        partition, offset = msg.partition(), msg.offset()
        return Delivery(msg.topic() or "", -1 if partition is None else partition,
                        -1 if offset is None or error is not None else offset, error)


class Acked:
    """What the broker said about records sent with :meth:`AsyncProducer.send_values`.

    One delivery callback serves the whole batch and keeps only a count on the happy path (no
    object per record); the records the broker did not take are found by :meth:`errors`.
    """

    __slots__ = ("_failures", "future", "loop", "received", "sent")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self._failures: list[tuple[str, bytes | None]] = []  # (why, value) per refused record
        self.received = 0  # written by whichever thread serves the delivery reports
        self.sent = -1
        """Leading records handed to librdkafka; fewer than were given when the local queue
        stayed full for the whole enqueue timeout (the rest were not sent)."""

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        """Delivery report of one record of the batch (runs where reports are served)."""
        if err is not None:
            self._failures.append((err.str(), msg.value()))
        self.received += 1
        if self.received == self.sent:
            self.loop.call_soon_threadsafe(_resolve, self.future)

    def seal(self, sent: int) -> None:
        """``sent`` records were enqueued; resolve now if every report is already in (see :meth:`Sent.seal`)."""
        self.sent = sent
        if self.received == sent:
            _resolve(self.future)

    @property
    def ok(self) -> bool:
        """True when the broker acknowledged every record that was sent."""
        return not self._failures

    def errors(self, values: Sequence[bytes]) -> dict[int, str]:
        """Index -> why the broker did not take that record, given the values that were sent.

        A refused record is recognised by its value (this runs only when some record failed);
        records with equal values share a key and so a partition, whose reports come in order,
        so they are matched to indices in order.
        """
        if not self._failures:
            return {}
        positions: dict[bytes | None, list[int]] = {}
        for index, value in enumerate(values[: max(self.sent, 0)]):
            positions.setdefault(value, []).append(index)
        out: dict[int, str] = {}
        for reason, refused in self._failures:
            candidates = positions.get(refused)
            if candidates:
                out[candidates.pop(0)] = reason
        return out


class _Closed:
    """Stands in for the librdkafka handle once the producer is closed: every use says so."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"the Kafka producer is closed (asked for {name!r})")


class AsyncProducer:
    """A confluent-kafka producer for asyncio code; one per process, owned by the app lifespan.

    Args:
        config: librdkafka settings; merged over :data:`DURABLE_DEFAULTS`.
        enqueue_timeout_s: how long a send waits for room in a full local queue before it
            raises :class:`ProducerQueueFull`.
        reports_on_loop: serve delivery reports on the event loop that awaits the sends (every
            millisecond while a send waits) instead of on a background thread, which has to
            take the GIL once per report from a busy event loop. For a producer that one
            event loop uses; :meth:`close` it after the last send returned.

    """

    def __init__(self, config: dict[str, Any], *, enqueue_timeout_s: float = 1.0,
                 reports_on_loop: bool = False) -> None:
        self._producer: Producer | _Closed = Producer({**DURABLE_DEFAULTS, **config})
        self._enqueue_timeout_s = enqueue_timeout_s
        self._stop = threading.Event()
        self._waiting = 0  # sends awaiting their reports (reports served on the loop)
        self._reports: tuple[asyncio.AbstractEventLoop, asyncio.TimerHandle] | None = None
        self._thread: threading.Thread | None = None
        if not reports_on_loop:
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
        sent = await self.send_batch(records)
        return [sent.delivery(i) for i in range(sent.sent)]

    async def send_batch(self, records: Sequence[RecordTuple]) -> Sent:
        """Send ``records`` in order and wait until the broker answered for every one.

        The batch form of :meth:`send_many` for hot paths: one small object per batch instead
        of one per record; ask the result for a record's :class:`Delivery` when needed.

        Raises:
            ProducerQueueFull: the local queue stayed full; ``results`` holds the deliveries
                of the records that were enqueued before it filled up.
            KafkaException: librdkafka refused a record (e.g. over ``message.max.bytes``),
                after the records before it were answered for.

        """
        sent = Sent(asyncio.get_running_loop(), len(records))
        produce = self._producer.produce
        report = sent.on_delivery
        enqueued = 0
        full = False
        try:
            for index, (topic, value, key) in enumerate(records):
                callback = partial(report, index)
                try:
                    produce(topic, value, key, -1, callback)
                except BufferError:
                    if not await self._room(produce, topic, value, key, callback):
                        full = True
                        break
                enqueued += 1
        finally:
            sent.seal(enqueued)
            await self._reported(sent.future)
        if full:
            raise ProducerQueueFull(
                f"producer queue full: {enqueued} of {len(records)} records sent, the rest refused",
                [sent.delivery(i) for i in range(enqueued)],
            )
        return sent

    async def send_values(self, topic: str, values: Sequence[bytes], keys: Sequence[bytes | str | None]) -> Acked:
        """Send ``values`` (with their ``keys``) to one topic in order; wait until the broker answered.

        The leanest batch send: one delivery callback for the whole batch and no object per
        record. Ask the result which records failed (:meth:`Acked.errors`); partitions and
        offsets are not kept.

        Returns:
            The batch's :class:`Acked`. When the local queue stayed full for the whole enqueue
            timeout, ``sent`` is less than ``len(values)``: the leading ``sent`` records were
            sent (and answered for), the rest were not.

        Raises:
            KafkaException: librdkafka refused a record (e.g. over ``message.max.bytes``),
                after the records before it were answered for.

        """
        acked = Acked(asyncio.get_running_loop())
        produce = self._producer.produce
        report = acked.on_delivery
        enqueued = 0
        try:
            for value, key in zip(values, keys, strict=True):
                try:
                    # Positional arguments: keyword parsing costs about a third of a
                    # microsecond per record. -1 is librdkafka's "partition by key".
                    produce(topic, value, key, -1, report)
                except BufferError:
                    if not await self._room(produce, topic, value, key, report):
                        break
                enqueued += 1
        finally:
            acked.seal(enqueued)
            await self._reported(acked.future)
        return acked

    async def _room(self, produce: Any, topic: str, value: bytes, key: bytes | str | None, report: Any) -> bool:
        """Retry one record while the local queue is full; False once the enqueue timeout passed."""
        deadline = time.monotonic() + self._enqueue_timeout_s
        while time.monotonic() < deadline:
            await asyncio.sleep(0.005)
            try:
                produce(topic, value, key, -1, report)
                return True
            except BufferError:
                continue
        return False

    async def _reported(self, future: asyncio.Future[None]) -> None:
        """Wait for a batch's reports; with reports served on the loop, keep serving them meanwhile."""
        if self._thread is not None:
            await future
            return
        loop = asyncio.get_running_loop()
        self._waiting += 1
        try:
            if self._reports is None or self._reports[0] is not loop:  # none yet, or of an older loop
                self._reports = (loop, loop.call_later(_REPORT_INTERVAL_S, self._serve_reports))
            await future
        finally:
            self._waiting -= 1

    def _serve_reports(self) -> None:
        """Serve the delivery reports that are in (callbacks run here, on the loop), then again soon."""
        self._reports = None
        if self._stop.is_set():
            return
        try:
            self._producer.poll(0)
        finally:
            if self._waiting:
                loop = asyncio.get_running_loop()
                self._reports = (loop, loop.call_later(_REPORT_INTERVAL_S, self._serve_reports))

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
        # Stop serving reports on the poll thread first: flush serves them here, and the
        # batches count their reports without a lock (one serving thread at a time).
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        left: int = self._producer.flush(timeout_s)
        # Release the librdkafka handle now (its threads and connections), not whenever the
        # garbage collector gets to an app that still refers to this object.
        self._producer = _Closed()
        if left:
            log.error("producer closed with undelivered records", extra={"undelivered": left})
        return left
