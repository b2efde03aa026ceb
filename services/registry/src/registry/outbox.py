"""The transactional outbox: registry events are committed with the change, published after.

A registration or alias move writes its Kafka record into the ``outbox`` table in the same
transaction as the change itself, so there is never a registered model without its event.
:class:`OutboxDrainer` publishes unpublished records in outbox order and marks them published
only after the broker acknowledged them (``acks=all``). A crash between commit and publish,
or a broker outage, only delays events; a crash between publish and marking publishes a
record twice with the same ``event_id``, which consumers deduplicate (at-least-once).

Run one drainer per database: two drainers would each publish every record (still
at-least-once, but out of order across the two).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from schemas.envelope import Envelope
from schemas.registry import ModelRegisteredV1, RolloutChangedV1
from tributary_kit.codec import encode
from tributary_kit.producer import AsyncProducer, ProducerError, Record
from tributary_kit.telemetry import current_traceparent

from registry import metrics
from registry.domain import AliasChange, ModelVersion, OutboxMessage
from registry.store import ModelStore

log = logging.getLogger(__name__)

SOURCE = "registry"


def model_registered(version: ModelVersion, *, topic: str) -> OutboxMessage:
    """The ``registry.model-registered.v1`` record of ``version``, keyed by model name."""
    payload = ModelRegisteredV1(
        model_name=version.model_name,
        version=version.version,
        sha256=version.sha256,
        size_bytes=version.size_bytes,
        opset=version.opset,
        inputs=version.inputs,
        outputs=version.outputs,
        dataset=version.dataset,
        metrics=version.metrics,
        training_window=version.training_window,
        has_reference_stats=version.reference_stats is not None,
        created_by=version.created_by,
        created_at=version.created_at,
    )
    envelope = Envelope.wrap(payload, event_id=str(uuid.uuid4()), source=SOURCE, occurred_at=version.created_at,
                             traceparent=current_traceparent())
    return OutboxMessage(topic=topic, key=version.model_name, value=encode(envelope))


def rollout_changed(change: AliasChange, *, topic: str) -> OutboxMessage:
    """The ``registry.rollout-changed.v1`` record of ``change``, keyed ``<model>/<alias>``."""
    payload = RolloutChangedV1(
        model_name=change.model_name,
        alias=change.alias,
        version=change.version,
        previous_version=change.previous_version,
        weight=change.weight,
        changed_by=change.changed_by,
        reason=change.reason,
        changed_at=change.changed_at,
    )
    envelope = Envelope.wrap(payload, event_id=str(uuid.uuid4()), source=SOURCE, occurred_at=change.changed_at,
                             traceparent=current_traceparent())
    return OutboxMessage(topic=topic, key=f"{change.model_name}/{change.alias}", value=encode(envelope))


class OutboxDrainer:
    """Publishes the outbox to Kafka: when woken after a commit, and every ``poll_interval_s``.

    Args:
        store: the registry store holding the outbox.
        producer: the process's Kafka producer.
        batch_size: most records published per round.
        poll_interval_s: the longest a record waits when nobody wakes the drainer (records
            left by a crash, or by a broker outage).

    """

    def __init__(self, store: ModelStore, producer: AsyncProducer, *, batch_size: int = 100,
                 poll_interval_s: float = 1.0) -> None:
        self._store = store
        self._producer = producer
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def waker(self) -> Callable[[], None]:
        """A function any thread may call to make the drainer run now (bound to the current loop)."""
        self._loop = asyncio.get_running_loop()
        loop = self._loop

        def wake() -> None:
            loop.call_soon_threadsafe(self._wake.set)

        return wake

    async def drain_once(self) -> int:
        """Publish pending records until none are left or one fails; return how many were published."""
        total = 0
        while True:
            pending = await asyncio.to_thread(self._store.pending_messages, self.batch_size)
            if not pending:
                break
            try:
                deliveries = await self._producer.send_many(
                    [Record(topic=m.topic, value=m.value, key=m.key) for m in pending]
                )
            except ProducerError as exc:
                log.warning("outbox publish failed, will retry", extra={"error": str(exc)})
                break
            # Mark only the acknowledged prefix: a later record is never published before an
            # earlier one that failed (they are retried together, in order).
            done: list[int] = []
            for message, delivery in zip(pending, deliveries, strict=False):
                if not delivery.ok:
                    log.warning("outbox record not acknowledged, will retry",
                                extra={"topic": message.topic, "error": delivery.error})
                    break
                done.append(message.id)
            await asyncio.to_thread(self._store.mark_published, done, datetime.now(UTC))
            total += len(done)
            metrics.OUTBOX_PUBLISHED.inc(len(done))
            if len(done) < len(pending) or len(pending) < self.batch_size:
                break
        metrics.OUTBOX_BACKLOG.set(await asyncio.to_thread(self._store.outbox_backlog))
        return total

    async def run(self) -> None:
        """Drain forever (until cancelled); errors are logged and retried on the next round."""
        while True:
            self._wake.clear()
            try:
                await self.drain_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox drain failed, will retry")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval_s)
