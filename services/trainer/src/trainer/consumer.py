"""The retrain-command consumer: at least once, idempotent per command id, poison to the DLQ.

One command at a time (the command topic has one partition). A command's offset is committed
only after its outcome events were acknowledged by the broker, so a crash at any point
redelivers it; the ledger and the registry's record of the command id make the redelivery
harmless. Transient trouble (broker or registry unreachable) rewinds to the command and retries
after a pause, up to ``max_attempts``; then the command fails with the reason. Records that are
not valid commands go to ``<topic>.dlq`` with the reason and are never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter as Tally

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from opentelemetry import trace
from schemas.topics import dlq
from schemas.training import TrainingCompletedV1, TrainingFailedV1
from tributary_kit.codec import PoisonMessage, encode
from tributary_kit.deadletter import dead_letter
from tributary_kit.producer import AsyncProducer, Record
from tributary_kit.telemetry import context_from

from trainer import metrics
from trainer.kafka import SOURCE, decode_command, event_bytes
from trainer.ledger import Ledger
from trainer.service import TRANSIENT, RunResult, TrainerService

log = logging.getLogger(__name__)


class CommandConsumer:
    """Feeds retrain commands from a consumer group to the trainer core and publishes the outcomes."""

    def __init__(self, consumer: Consumer, service: TrainerService, producer: AsyncProducer, ledger: Ledger, *,
                 topic: str, retry_backoff_s: float = 5.0, max_attempts: int = 3,
                 tracer: trace.Tracer | None = None) -> None:
        self._consumer = consumer
        self._service = service
        self._producer = producer
        self._ledger = ledger
        self._topic = topic
        self._retry_backoff_s = retry_backoff_s
        self._max_attempts = max_attempts
        self._attempts: Tally[str] = Tally()
        self._stopping = asyncio.Event()
        self._tracer = tracer or trace.get_tracer("trainer")
        self.handled = 0

    def stop(self) -> None:
        """Finish the current command and stop."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume until :meth:`stop`; the consumer is closed on the way out."""
        self._consumer.subscribe([self._topic])
        try:
            while not self._stopping.is_set():
                msg = await asyncio.to_thread(self._consumer.poll, 0.5)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        log.warning("command consumer error", extra={"error": err.str()})
                    continue
                await self.handle(msg)
        finally:
            await asyncio.to_thread(self._consumer.close)

    async def handle(self, msg: Message) -> None:
        """Handle one command record; commits its offset only once its outcome is durable."""
        try:
            envelope = decode_command(msg.value())
        except PoisonMessage as exc:
            await self._dead_letter(msg, str(exc))
            return
        command = envelope.payload
        with self._tracer.start_as_current_span("trainer.command", context=context_from(envelope.traceparent),
                                                kind=trace.SpanKind.CONSUMER):
            try:
                result = await asyncio.to_thread(self._service.run, command)
            except TRANSIENT as exc:
                self._attempts[command.command_id] += 1
                if self._attempts[command.command_id] < self._max_attempts:
                    log.warning("command hit transient trouble; retrying",
                                extra={"command_id": command.command_id, "reason": str(exc),
                                       "attempt": self._attempts[command.command_id]})
                    await self._retry(msg)
                    return
                result = self._service.fail(command, exc)
            if not await self._publish(result):
                await self._retry(msg)
                return
        self._attempts.pop(command.command_id, None)
        await self._commit(msg)
        self.handled += 1

    async def _publish(self, result: RunResult) -> bool:
        records = [Record(p.topic, event_bytes(p.payload), p.key) for p in result.events]
        if not records:
            return True
        try:
            deliveries = await self._producer.send_many(records)
        except Exception as exc:  # queue full or librdkafka refusing: retry the command
            log.error("could not publish the outcome", extra={"reason": str(exc)})
            metrics.PUBLISH_FAILURES.inc()
            return False
        failed = [d.error for d in deliveries if not d.ok]
        if failed or len(deliveries) != len(records):
            log.error("the broker did not acknowledge the outcome", extra={"errors": failed})
            metrics.PUBLISH_FAILURES.inc()
            return False
        for publication in result.events:
            if isinstance(publication.payload, TrainingCompletedV1 | TrainingFailedV1):
                self._ledger.record(publication.payload)
        return True

    async def _dead_letter(self, msg: Message, reason: str) -> None:
        key = msg.key()
        letter = dead_letter(origin="kafka", topic=msg.topic() or self._topic, reason=reason,
                             payload=msg.value() or b"", source=SOURCE, partition=msg.partition(),
                             offset=msg.offset(),
                             key=key.decode("utf-8", "replace") if isinstance(key, bytes) else key)
        delivery = await self._producer.send(dlq(self._topic), encode(letter), key=key)
        if not delivery.ok:
            log.error("could not dead-letter a command record", extra={"reason": delivery.error})
            await self._retry(msg)
            return
        metrics.COMMANDS.labels("dead_lettered").inc()
        log.warning("command record dead-lettered", extra={"reason": reason, "offset": msg.offset()})
        await self._commit(msg)

    async def _retry(self, msg: Message) -> None:
        try:
            await asyncio.to_thread(self._consumer.seek,
                                    TopicPartition(msg.topic() or self._topic, msg.partition() or 0, msg.offset() or 0))
        except KafkaException as exc:
            log.warning("seek failed; the command comes back after a rebalance", extra={"reason": str(exc)})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=self._retry_backoff_s)

    async def _commit(self, msg: Message) -> None:
        try:
            await asyncio.to_thread(self._consumer.commit, message=msg, asynchronous=False)
        except KafkaException as exc:
            # A rebalance took the partition: the new owner redelivers, and the ledger skips it.
            log.warning("commit failed; the command will be redelivered", extra={"reason": str(exc)})
