"""The ingest core: validate rows, publish the valid ones, dead-letter the rest. No HTTP here.

Both entry points (HTTP requests and the raw Kafka topics) hand their rows to
:meth:`IngestService.ingest`. Valid events and the dead-letter records of invalid ones go to
the producer together, and the call returns only once the broker acknowledged every one of
them, so an answer of "accepted" means "durably in Kafka".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast

from opentelemetry import trace
from schemas.deadletter import Problem
from schemas.topics import FEATURES, LABELS, dlq
from tributary_kit.codec import encode, encode_event, encode_event_payloads
from tributary_kit.deadletter import dead_letter
from tributary_kit.producer import Acked, AsyncProducer, ProducerQueueFull, Record, RecordTuple, Sent
from tributary_kit.telemetry import current_traceparent

from ingest import metrics
from ingest.errors import BrokerUnavailable, Overloaded
from ingest.spec_models import BatchValidator, FeatureEventStruct
from ingest.validation import DataEvent, Kind, SpecLookup, check_event, validate_row

log = logging.getLogger(__name__)

Origin = Literal["http", "kafka"]
TOPICS: dict[Kind, str] = {"features": FEATURES, "labels": LABELS}


@dataclass(frozen=True, slots=True)
class Row:
    """One input row: its decoded JSON value, or why it could not be decoded.

    ``event`` is set instead of ``value`` when the row was already parsed against the contract.
    ``text`` is the original text, kept for dead letters (None: re-serialise ``value``).
    ``partition``/``offset``/``key`` say where a raw Kafka record came from.
    """

    value: Any = None
    event: DataEvent | None = None
    text: str | bytes | None = None
    error: str | None = None
    partition: int | None = None
    offset: int | None = None
    key: str | None = None

    def original(self) -> str | bytes:
        """The row as it arrived, as closely as it can be reproduced."""
        if self.text is not None:
            return self.text
        if self.event is not None:
            return self.event.model_dump_json()
        try:
            return json.dumps(self.value)
        except (TypeError, ValueError):
            return repr(self.value)


@dataclass(slots=True)
class Accepted:
    """An event the broker acknowledged, and where it landed."""

    event_id: str
    partition: int
    offset: int


@dataclass(slots=True)
class IngestResult:
    """What became of a batch: every row is either accepted or has problems (and a dead letter).

    ``accepted`` lists the acknowledged event ids in order; :meth:`where` tells where one landed.
    """

    total: int
    accepted: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    rejected_rows: int = 0
    _sent: Sent | None = None
    _records: list[int] = field(default_factory=list)  # per accepted event: its record's index

    def where(self, n: int) -> Accepted:
        """The ``n``-th accepted event with its partition and offset (not kept for checked batches)."""
        if self._sent is None:
            raise IndexError("no positions were kept: nothing was published, or a checked batch")
        delivery = self._sent.delivery(self._records[n])
        return Accepted(self.accepted[n], delivery.partition, delivery.offset)


class IngestService:
    """Validates and publishes data events; one instance per process.

    Args:
        specs: looks up a dataset spec by name.
        compiled: the current batch validator compiled from every spec (fast path of JSON
            batches); None validates row by row only.
        producer: the process's Kafka producer.
        tracer: tracer for the batch spans; its context travels in every envelope.
    """

    def __init__(self, *, specs: SpecLookup, producer: AsyncProducer, tracer: trace.Tracer,
                 source: str = "ingest", compiled: Callable[[], BatchValidator] | None = None) -> None:
        self._specs = specs
        self._compiled = compiled
        self._producer = producer
        self._tracer = tracer
        self._source = source

    def queue_length(self) -> int:
        """Records in the producer's queue or in flight to the broker."""
        return self._producer.queue_length()

    def batch_validator(self) -> BatchValidator | None:
        """The compiled validator of JSON feature batches, when the service has one."""
        return self._compiled() if self._compiled is not None else None

    async def publish_checked(self, kind: Kind, events: Sequence[FeatureEventStruct], payloads: Sequence[bytes], *,
                              origin: Origin) -> IngestResult:
        """Publish ``events`` that were already validated against their datasets' specs.

        The path of batches the compiled validator took whole (see :mod:`ingest.spec_models`):
        ``payloads`` holds each event's JSON as the validator encoded it; no per-row checks, one
        envelope pass, one producer batch with one delivery callback for all its records.
        Partitions and offsets are not kept (:meth:`IngestResult.where` does not answer).

        Raises:
            Overloaded: the producer queue stayed full; ``accepted`` lists what was published.
            BrokerUnavailable: the broker did not acknowledge some records.
        """
        topic = TOPICS[kind]
        result = IngestResult(total=len(events))
        with self._tracer.start_as_current_span(
            "ingest.batch", attributes={"ingest.kind": kind, "ingest.origin": origin, "ingest.rows": len(events)}
        ):
            event_ids = [e.event_id for e in events]
            values = encode_event_payloads(payloads, event_ids, event_type=topic, source=self._source,
                                           occurred_at=datetime.now(UTC), traceparent=current_traceparent())
            acked = await self._producer.send_values(topic, values, [e.entity_id for e in events])
            self._account_checked(acked, values, event_ids, result, kind=kind, origin=origin)
        return result

    @staticmethod
    def _account_checked(acked: Acked, values: Sequence[bytes], event_ids: list[str], result: IngestResult, *,
                         kind: Kind, origin: Origin) -> None:
        """Record what became of a checked batch; raise when not every event is in Kafka."""
        if acked.ok and acked.sent == len(event_ids):
            result.accepted = event_ids
            metrics.EVENTS.labels(kind, origin, "accepted").inc(len(event_ids))
            return
        errors = acked.errors(values)
        if not acked.ok and not errors:  # reports that match no value: trust none of the batch
            errors = dict.fromkeys(range(acked.sent), "delivery reports did not match the records sent")
        result.accepted = [e for i, e in enumerate(event_ids[: acked.sent]) if i not in errors]
        metrics.EVENTS.labels(kind, origin, "accepted").inc(len(result.accepted))
        if acked.sent < len(event_ids):
            metrics.SHED.inc()
            raise Overloaded(
                f"ingest is overloaded: {len(result.accepted)} of {len(event_ids)} valid events were published "
                "before the producer queue filled up; send the rest again after Retry-After (resending "
                "accepted events is safe: consumers deduplicate by event id)",
                accepted=list(result.accepted),
            )
        failed = [event_ids[i] for i in sorted(errors)]
        metrics.EVENTS.labels(kind, origin, "failed").inc(len(failed))
        raise BrokerUnavailable(
            f"the broker did not acknowledge {len(failed)} records ({errors[min(errors)]}); send them again "
            "(resending is safe: consumers deduplicate by event id)",
            accepted=list(result.accepted), failed=failed,
        )

    async def ingest(self, kind: Kind, rows: Sequence[Row], *, origin: Origin,
                     source_topic: str | None = None) -> IngestResult:
        """Validate ``rows``, publish the valid events and dead-letter the invalid rows.

        Args:
            kind: features or labels.
            rows: the decoded input rows, in order.
            origin: where the rows came from (for dead letters and metrics).
            source_topic: the raw topic the rows were read from (Kafka origin); invalid rows go
                to its dead-letter topic. HTTP rows go to ``<validated topic>.dlq``.

        Returns:
            The acknowledged events and the problems of the refused rows.

        Raises:
            Overloaded: the producer queue stayed full; ``accepted`` lists what was published.
            BrokerUnavailable: the broker did not acknowledge some records.
        """
        topic = TOPICS[kind]
        dlq_topic = dlq(source_topic or topic)
        result = IngestResult(total=len(rows))
        with self._tracer.start_as_current_span(
            "ingest.batch", attributes={"ingest.kind": kind, "ingest.origin": origin, "ingest.rows": len(rows)}
        ):
            traceparent = current_traceparent()
            now = datetime.now(UTC)
            records: list[Record] = []
            event_ids: list[str | None] = []  # per record: the event id, None for dead letters
            for index, row in enumerate(rows):
                outcome: DataEvent | list[Problem]
                if row.error is not None:
                    outcome = [Problem(row=index, field="", message=row.error)]
                elif row.event is not None:
                    outcome = check_event(row.event, self._specs, row=index)
                else:
                    outcome = validate_row(row.value, kind, self._specs, row=index)
                if isinstance(outcome, list):
                    result.problems += outcome
                    result.rejected_rows += 1
                    letter = dead_letter(
                        origin=origin, topic=source_topic or topic,
                        reason="; ".join(f"{p.field or 'row'}: {p.message}" for p in outcome),
                        payload=row.original(), source=self._source, problems=outcome,
                        partition=row.partition, offset=row.offset, key=row.key, traceparent=traceparent,
                    )
                    records.append(Record(dlq_topic, encode(letter), row.key))
                    event_ids.append(None)
                    continue
                value = encode_event(outcome, event_id=outcome.event_id, source=self._source, occurred_at=now,
                                     traceparent=traceparent, event_type=topic)
                records.append(Record(topic, value, outcome.entity_id))
                event_ids.append(outcome.event_id)
            await self._publish(records, event_ids, result, kind=kind, origin=origin, dlq_topic=dlq_topic)
        return result

    async def refuse(self, kind: Kind, payload: bytes, *, reason: str, size: int | None = None) -> bool:
        """Dead-letter a whole request that could not be read as events; True once stored.

        Storing is best effort: the caller has already refused the request, and a broker that
        is down only costs the record of the refusal (counted in the logs and metrics).
        """
        topic = TOPICS[kind]
        letter = dead_letter(origin="http", topic=topic, reason=reason, payload=payload, size=size,
                             source=self._source, traceparent=current_traceparent())
        try:
            delivery = await self._producer.send(dlq(topic), encode(letter))
        except ProducerQueueFull:
            delivery = None
        if delivery is None or not delivery.ok:
            log.error("could not dead-letter a refused request", extra={"reason": reason})
            return False
        metrics.DEAD_LETTERS.labels(dlq(topic)).inc()
        return True

    @staticmethod
    def _sort_out(event_ids: Sequence[str | None], errors: Mapping[int, str], accepted: list[str],
                  positions: list[int]) -> None:
        """Append the acknowledged events of a batch with failures or dead letters to ``accepted``."""
        for index, event_id in enumerate(event_ids):
            if event_id is not None and index not in errors:
                accepted.append(event_id)
                positions.append(index)

    async def _publish(self, records: Sequence[RecordTuple], event_ids: Sequence[str | None], result: IngestResult, *,
                       kind: Kind, origin: Origin, dlq_topic: str) -> None:
        try:
            sent = await self._producer.send_batch(records)
        except ProducerQueueFull as exc:
            accepted = [eid for eid, d in zip(event_ids, exc.results, strict=False) if eid and d.ok]
            metrics.EVENTS.labels(kind, origin, "accepted").inc(len(accepted))
            metrics.SHED.inc()
            raise Overloaded(
                f"ingest is overloaded: {len(accepted)} of {sum(1 for e in event_ids if e)} valid events were "
                "published before the producer queue filled up; send the rest again after Retry-After "
                "(resending accepted events is safe: consumers deduplicate by event id)",
                accepted=accepted,
            ) from exc
        result._sent = sent
        errors = sent.errors
        letters = 0
        accepted, positions = result.accepted, result._records
        if not errors and None not in event_ids:  # every record an event, every one acknowledged
            accepted += cast(Sequence[str], event_ids)
            positions += range(len(event_ids))
        else:
            self._sort_out(event_ids, errors, accepted, positions)
            letters = sum(1 for i, e in enumerate(event_ids) if e is None and i not in errors)
        metrics.EVENTS.labels(kind, origin, "accepted").inc(len(accepted))
        metrics.EVENTS.labels(kind, origin, "rejected").inc(result.rejected_rows)
        if letters:
            metrics.DEAD_LETTERS.labels(dlq_topic).inc(letters)
        if errors:
            failed = [event_ids[i] or "<dead letter>" for i in sorted(errors)]
            metrics.EVENTS.labels(kind, origin, "failed").inc(len(failed))
            reason = errors[min(errors)]
            raise BrokerUnavailable(
                f"the broker did not acknowledge {len(failed)} records ({reason}); send them again "
                "(resending is safe: consumers deduplicate by event id)",
                accepted=list(accepted), failed=failed,
            )
