"""Kafka for the gateway; the only module where event bytes exist.

The producer, event bytes, an at-least-once consumer loop, and the background publisher of
prediction events.

Consumers come in two kinds. *Replaying* consumers (the rollout topic) read every partition from
the beginning at each start, with no consumer group, so a new replica rebuilds its whole state;
their handlers are idempotent. *Group* consumers (features, labels, requests) share the work
between replicas and store an offset only after the record was handled or dead-lettered, so a
crash redelivers (at least once). Records that can never be handled go to ``<topic>.dlq``; a
handler's transient failure (Redis down) is retried after a pause, never skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from opentelemetry import trace
from schemas.envelope import Envelope, Event
from schemas.inference import PredictionEventV1
from schemas.topics import dlq
from tributary_kit.codec import PoisonMessage, decode, encode, encode_event
from tributary_kit.deadletter import dead_letter
from tributary_kit.producer import AsyncProducer, ProducerError, Record
from tributary_kit.telemetry import context_from, current_traceparent

from inference import metrics
from inference.ids import RequestIds, prediction_event_id
from inference.settings import Settings

log = logging.getLogger(__name__)

SOURCE = "inference"
P = TypeVar("P", bound=Event)


def build_producer(settings: Settings, *, linger_ms: int | None = None, client_id: str = "inference"
                   ) -> AsyncProducer:
    """The idempotent, acks=all producer of the gateway's events (``linger_ms`` over the default batching)."""
    config: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap, "client.id": client_id,
                              "message.timeout.ms": 10_000}
    if linger_ms is not None:
        config["linger.ms"] = linger_ms
    return AsyncProducer({**config, **settings.producer_config}, enqueue_timeout_s=0.05)


def build_consumer(settings: Settings, *, group_id: str | None, client_id: str,
                   start: Literal["earliest", "latest"] = "earliest") -> Consumer:
    """A consumer; ``group_id=None`` makes a replaying consumer (assigned partitions, no commits).

    ``start`` is where a group without committed offsets begins.
    """
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "client.id": client_id,
        "auto.offset.reset": start,
        "enable.partition.eof": False,
    }
    if group_id is None:
        config |= {"group.id": f"inference-replay-{uuid.uuid4()}", "enable.auto.commit": False}
    else:
        # Offsets are stored by hand after each record is handled; librdkafka commits stored ones.
        config |= {"group.id": group_id + settings.group_suffix, "enable.auto.commit": True,
                   "enable.auto.offset.store": False}
    return Consumer(config)


def event_bytes(payload: Event) -> bytes:
    """The wire form of ``payload`` in a new envelope from this service, with the current trace."""
    return encode_event(payload, event_id=str(uuid.uuid4()), source=SOURCE, occurred_at=datetime.now(UTC),
                        traceparent=current_traceparent())


async def publish(producer: AsyncProducer, records: list[tuple[str, str, Event]]) -> None:
    """Send ``(topic, key, payload)`` records and wait for the broker.

    Raises:
        ProducerError: the local queue is full or the broker refused a record.

    """
    deliveries = await producer.send_many([Record(t, event_bytes(p), k) for t, k, p in records])
    failed = [d for d in deliveries if not d.ok]
    if failed:
        raise ProducerError(f"{len(failed)} of {len(records)} records refused: {failed[0].error}")


Handler = Callable[[list[Envelope[P]]], Awaitable[None]]


class EventConsumer(Generic[P]):
    """Reads one topic in batches and hands the decoded envelopes to ``handle``.

    Args:
        consumer: from :func:`build_consumer`.
        topic: the topic to read.
        payload_type: the event class every record must hold.
        handle: called with each batch of valid envelopes; idempotent; may raise to be retried.
        producer: for dead letters.
        replay: read every partition from the start without a group (see the module docstring).
        name: for logs.

    """

    def __init__(self, consumer: Consumer, *, topic: str, payload_type: type[P], handle: Handler[P],
                 producer: AsyncProducer, replay: bool, name: str, batch_size: int = 500,
                 retry_backoff_s: float = 0.5, tracer: trace.Tracer | None = None) -> None:
        self._consumer = consumer
        self.topic = topic
        self._type = payload_type
        self._handle = handle
        self._producer = producer
        self._replay = replay
        self.name = name
        self._batch_size = batch_size
        self._backoff = retry_backoff_s
        self._stopping = asyncio.Event()
        self.caught_up = asyncio.Event()
        """Set once every record present at start-up was handled (replaying consumers)."""
        self._targets: dict[int, int] = {}
        self._tracer = tracer or trace.get_tracer("inference")

    def stop(self) -> None:
        """Finish the current batch and stop."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume until :meth:`stop`; the consumer is closed on the way out."""
        try:
            await self._begin()
            while not self._stopping.is_set():
                messages = await asyncio.to_thread(self._consumer.consume, self._batch_size, 0.2)
                usable = [m for m in messages if self._usable(m)]
                if usable:
                    await self._batch(usable)
                self._check_caught_up(usable)
        finally:
            await asyncio.to_thread(self._consumer.close)

    async def _begin(self) -> None:
        """Subscribe, or assign every partition from the start (replaying), retrying until it works.

        Reading a new topic's partitions and watermarks fails while its partition leaders are still
        being elected, and times out on a broker slowed down; a consumer that gave up there would stay
        stopped without a word (a replica that never applies rollout events again), so it retries.
        """
        while not self._stopping.is_set():
            try:
                await asyncio.to_thread(self._start)
                return
            except KafkaException as exc:
                log.warning("consumer not started; retrying", extra={"consumer": self.name, "topic": self.topic,
                                                                     "error": str(exc)})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self._backoff)

    def _start(self) -> None:
        if not self._replay:
            self._consumer.subscribe([self.topic])
            self.caught_up.set()
            return
        meta = self._consumer.list_topics(self.topic, timeout=10).topics[self.topic]
        if meta.error is not None:
            raise KafkaException(meta.error)
        partitions = sorted(meta.partitions)
        self._targets.clear()
        for p in partitions:
            low, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)
            if high > low:
                self._targets[p] = high
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
        if not self._targets:
            self.caught_up.set()

    def _check_caught_up(self, handled: list[Message]) -> None:
        if self.caught_up.is_set():
            return
        for m in handled:
            p, o = m.partition(), m.offset()
            if p is not None and o is not None and p in self._targets and o + 1 >= self._targets[p]:
                del self._targets[p]
        if not self._targets:
            log.info("consumer caught up", extra={"consumer": self.name, "topic": self.topic})
            self.caught_up.set()

    def _usable(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return True
        if err.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer error", extra={"consumer": self.name, "error": err.str()})
        return False

    async def _batch(self, messages: list[Message]) -> None:
        envelopes: list[Envelope[P]] = []
        for msg in messages:
            try:
                envelopes.append(decode(msg.value(), self._type))
            except PoisonMessage as exc:
                await self._dead_letter(msg, str(exc))
        while envelopes and not self._stopping.is_set():
            try:
                with self._span(envelopes):
                    await self._handle(envelopes)
                break
            except Exception:  # transient (Redis, broker): retry the same batch, never skip it
                log.exception("handler failed; retrying the batch", extra={"consumer": self.name})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self._backoff)
        else:
            if envelopes:
                return  # stopping before the batch was handled: offsets not stored, redelivered
        if not self._replay:
            for msg in messages:
                try:
                    self._consumer.store_offsets(msg)
                except KafkaException as exc:  # partition revoked meanwhile: the new owner re-reads
                    log.warning("offset not stored", extra={"consumer": self.name, "reason": str(exc)})

    def _span(self, envelopes: list[Envelope[P]]) -> Any:
        """The consumer span of a batch, handled as one unit.

        It continues the trace of the batch's first record and links every other record's trace.
        """
        parents = [trace.get_current_span(context_from(e.traceparent)).get_span_context() for e in envelopes]
        links = [trace.Link(c) for c in parents[1:] if c.is_valid]
        return self._tracer.start_as_current_span(
            f"inference.consume {self.topic}", context=context_from(envelopes[0].traceparent),
            kind=trace.SpanKind.CONSUMER, links=links,
            attributes={"messaging.destination.name": self.topic, "messaging.batch.message_count": len(envelopes)})

    async def _dead_letter(self, msg: Message, reason: str) -> None:
        key = msg.key()
        record = dead_letter(origin="kafka", topic=self.topic, reason=reason, payload=msg.value() or b"",
                             source=SOURCE, partition=msg.partition(), offset=msg.offset(),
                             key=key.decode("utf-8", errors="replace") if isinstance(key, bytes) else key)
        target = dlq(self.topic)
        while not self._stopping.is_set():
            try:
                delivery = await self._producer.send(target, encode(record), key)
                if delivery.ok:
                    metrics.DEAD_LETTERS.labels(target).inc()
                    return
                log.warning("dead letter refused; retrying", extra={"topic": target, "error": delivery.error})
            except ProducerError as exc:
                log.warning("dead letter not sent; retrying", extra={"topic": target, "error": str(exc)})
            await asyncio.sleep(self._backoff)


class PredictionPublisher:
    """Publishes prediction events in the background, so no REST or gRPC request waits for the broker.

    Two ways in:

    - :meth:`offer` (REST, gRPC, shadow): fire and forget through a bounded queue; when it is full
      the event is dropped and counted (``inference_prediction_events_total{outcome="dropped"}``)
      rather than slowing callers. Its events get fresh ids.
    - :meth:`deliver` (requests read from Kafka): never dropped, and the returned future completes
      only when the broker acknowledged the event, so the request's offset is stored after it
      (at least once). Its event id is derived from the request id, version and route
      (:func:`inference.ids.prediction_event_id`), so a redelivered request republishes the same id.

    Both share one publishing task, in arrival order; events are encoded by that task, not by the
    callers. ``deliver`` needs no bound of its own: the request consumer waits for each batch's
    events before it reads the next.
    """

    def __init__(self, producer: AsyncProducer, topic: str, *, queue_size: int, batch_size: int = 500) -> None:
        self._producer = producer
        self.topic = topic
        # Unbounded: the bound applies to offered events only (see `offer`), never to delivered ones.
        self._queue: asyncio.Queue[tuple[PredictionEventV1, str | None, asyncio.Future[None] | None]] = (
            asyncio.Queue())
        self._queue_size = queue_size
        self._offered = 0
        """Offered events queued and not yet taken by the publishing task."""
        self._batch_size = batch_size
        self._task: asyncio.Task[None] | None = None
        self._sending = False
        self._dropped = metrics.PREDICTION_EVENTS.labels("dropped")
        self._ids = RequestIds()

    def offer(self, event: PredictionEventV1) -> bool:
        """Queue ``event`` (with the current trace); False (and counted) when the queue is full."""
        if self._offered >= self._queue_size:
            self._dropped.inc()
            return False
        self._offered += 1
        self._queue.put_nowait((event, _traceparent(), None))
        return True

    def deliver(self, event: PredictionEventV1) -> asyncio.Future[None]:
        """Queue ``event`` (with the current trace) whatever the queue holds; never dropped.

        Returns:
            A future done when the broker acknowledged the event; it fails with
            :class:`~tributary_kit.producer.ProducerError` when the broker refused it or it could not be
            sent, and is cancelled when the publisher stops first. Either way the caller must not
            count the event as published (a Kafka request's offset stays unstored).

        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((event, _traceparent(), future))
        return future

    def _record(self, event: PredictionEventV1, traceparent: str | None, durable: bool) -> Record:
        event_id = (prediction_event_id(event.request_id, event.model_name, event.model_version, event.route)
                    if durable else self._ids.next())
        value = encode_event(event, event_id=event_id, source=SOURCE, occurred_at=event.served_at,
                             traceparent=traceparent)
        return Record(self.topic, value, event.entity_id or event.request_id)

    def start(self) -> None:
        """Start draining the queue."""
        self._task = asyncio.create_task(self._drain(), name="inference-prediction-publisher")

    async def _drain(self) -> None:
        while True:
            queued = [await self._queue.get()]
            while len(queued) < self._batch_size and not self._queue.empty():
                queued.append(self._queue.get_nowait())
            self._offered -= sum(1 for _, _, future in queued if future is None)
            self._sending = True
            try:
                await self._send(queued)
            except asyncio.CancelledError:
                _fail([f for _, _, f in queued], None)
                raise
            finally:
                self._sending = False

    async def _send(self, queued: list[tuple[PredictionEventV1, str | None, asyncio.Future[None] | None]]
                    ) -> None:
        batch = [self._record(event, traceparent, future is not None) for event, traceparent, future in queued]
        futures = [future for _, _, future in queued]
        try:
            deliveries = await self._producer.send_many(batch)
        except ProducerError as exc:
            metrics.PREDICTION_EVENTS.labels("failed").inc(len(batch))
            log.warning("prediction events not published", extra={"count": len(batch), "error": str(exc)})
            _fail(futures, exc)
            return
        ok = 0
        for delivery, future, (event, _, _) in zip(deliveries, futures, queued, strict=True):
            if delivery.ok:
                ok += 1
                if future is not None and not future.done():
                    future.set_result(None)
            elif future is not None and not future.done():
                future.set_exception(ProducerError(f"prediction event of request {event.request_id!r} refused by "
                                                   f"the broker: {delivery.error}"))
        metrics.PREDICTION_EVENTS.labels("published").inc(ok)
        metrics.PREDICTION_EVENTS.labels("failed").inc(len(batch) - ok)

    async def idle(self) -> None:
        """Return once every queued event was sent and answered for (polls; for shutdown and tests)."""
        while not self._queue.empty() or self._sending:
            await asyncio.sleep(0.01)

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Publish what is queued (up to ``timeout_s``), then stop; undelivered futures are cancelled."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.idle(), timeout_s)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            _fail([self._queue.get_nowait()[2]], None)


def _traceparent() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}" if ctx.is_valid else None


def _fail(futures: list[asyncio.Future[None] | None], exc: BaseException | None) -> None:
    """Fail (``exc``) or cancel (None) the futures not done yet."""
    for future in futures:
        if future is not None and not future.done():
            if exc is None:
                future.cancel()
            else:
                future.set_exception(exc)
