"""The Faust app: one agent per input topic, each a thin adapter over :class:`DriftService`.

faust-streaming 0.15 with its aiokafka 0.14 driver works against Kafka 4.x (KRaft) as it is:
producing, group consumption, commits and a table restored from its changelog were checked
against the project's broker, so no compatibility shim is needed.

State: one table (``<app_id>-state-changelog``, one partition, keys placed by the
partitioner) holds everything the service keeps. One partition because the monitors' keys
are per dataset while the inputs are partitioned by entity; a single worker owns all of it:
the group's assignor (:class:`~drift.assignor.ActiveStandbyAssignor`) gives every partition
to one active member, and further workers wait as standbys (see the README on scaling out).

Delivery: an exception in a Faust agent acks the message, so every iteration is wrapped:
a record that can never be processed goes to ``<topic>.dlq`` with the reason; publishing
(reports, commands, dead letters) is awaited inside the iteration, so offsets are committed
only after the outputs were acknowledged. A crash before the commit redelivers the record; the
positions skip records already applied (a record's position is saved with its effect) and
reports/commands carry deterministic ids.

Positions: faust's committed offsets run past records no agent saw (it acks records delivered
while flow control is suspended or for a stale generation, and drops records below its racy
``Consumer._read_offset``, acking their range as a "gap"). The service therefore resumes
from its own positions (:class:`~drift.positions.Positions`, in the state table): every agent
applies a partition's records in offset order from its position, asks for a refetch when
records before one went missing, and the consumer seeks to the positions whenever faust seeks
to the committed offsets (after each recovery and rebalance).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import faust
from faust.types import TP
from faust.types.transports import ConsumerT
from faust.types.tuples import FutureMessage
from opentelemetry import trace
from schemas.dataset import DatasetSpecRegisteredV1
from schemas.drift import DriftReportV1
from schemas.envelope import Event
from schemas.inference import PredictionEventV1
from schemas.ingest import FeatureEventV1, LabelEventV1
from schemas.registry import ModelRegisteredV1, RolloutChangedV1
from schemas.training import RetrainCommandV1
from tributary_kit.telemetry import context_from, current_traceparent

from drift import metrics
from drift.assignor import ActiveStandbyAssignor
from drift.kafka import PoisonMessage, dead_letter_bytes, decode_value, encode_payload, provenance
from drift.positions import Admission, Positions
from drift.reference import RegistryClient
from drift.service import DriftService, RecordPosition
from drift.settings import Settings
from schemas import topics

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)


class StateTable(faust.Table[Any, Any]):
    """The service's state table; remembers its last changelog write.

    Its writes reach the changelog through the producer's buffer, asynchronously and in
    order (one partition), so once the last write is acknowledged every earlier one is too.
    """

    last_write: FutureMessage | None = None

    def send_changelog(self, partition: int | None, key: Any, value: Any, key_serializer: Any = None,
                       value_serializer: Any = None) -> FutureMessage:
        """Send one change (faust calls this for every write) and remember it."""
        fut: FutureMessage = super().send_changelog(partition, key, value, key_serializer, value_serializer)
        self.last_write = fut
        return fut

    def drop_local(self) -> None:
        """Forget the local copy of the state (a standby's); the changelog keeps it."""
        store: Any = self.data
        store.data.clear()                           # faust's in-memory store (``store="memory://"``)
        store._key_partition.clear()
        self.last_write = None

    async def durable(self) -> None:
        """Wait until every write made so far is in the changelog."""
        if self.last_write is not None:
            await asyncio.shield(self.last_write)   # a caller giving up must not cancel the send


class StreamApp(faust.App):
    """The Faust app, whose producer flush also waits for the state table's last write.

    Faust commits a partition's offsets after ``producer.flush()``, and its buffer's flush
    returns when no message left the buffer for 0.1 s, possibly with table writes still in
    it: a worker killed then comes back with offsets committed past records whose state was
    never written, and those records are not redelivered (events lost from the windows). The
    flush here also awaits the acknowledgement of the table's last write, which covers every
    earlier one (one changelog partition, written in order).
    """

    state_table: StateTable | None = None
    positions: Positions | None = None

    def _new_consumer(self) -> ConsumerT:
        """Faust's consumer, which never drops input records and seeks inputs to the positions.

        faust keeps a read offset per partition and silently drops any record below it; it is
        set from outside the fetch loop (seeks), so records fetched around a seek are dropped
        and their offsets committed as a gap. The input topics' records all reach the agents
        instead, which apply them in order from the positions (``Consumer._read_offset`` is
        private: there is no setting for it).
        """
        consumer = super()._new_consumer()
        consumer._read_offset = _ReadOffsets(frozenset(INPUT_TOPICS))  # type: ignore[attr-defined]
        perform_seek = consumer.perform_seek

        async def perform_seek_to_positions() -> None:
            await perform_seek()
            await self._seek_to_positions(consumer)

        # faust seeks to the committed offsets after each recovery and rebalance, and when a
        # fetch returns while flow is stopped; the positions are where the inputs resume.
        setattr(consumer, "perform_seek", perform_seek_to_positions)  # noqa: B010
        return consumer

    async def _seek_to_positions(self, consumer: ConsumerT) -> None:
        """Seek every assigned input partition back to its position when faust's seek went past it.

        Called after the table's recovery (faust recovers tables before it seeks the stream
        partitions); called during a recovery, an older position only rereads applied records.
        faust's seek has just set ``Consumer._committed_offset`` (private). Seeks go through the
        consumer's own thread (``seek_wait``): aiokafka is not thread-safe, and ``Consumer.seek``
        would move its fetcher from this thread.
        """
        positions = self.positions
        if positions is None:
            return
        for tp in consumer.assignment():
            if tp.topic not in INPUT_TOPICS:
                continue
            committed = consumer._committed_offset.get(tp)  # type: ignore[attr-defined]
            if committed is not None and committed < 0:
                committed = None
            at = positions.stored(tp.topic, tp.partition)
            if at is None:
                if committed is not None and positions.next_offset(tp.topic, tp.partition) is None:
                    positions.start_at(tp.topic, tp.partition, committed)
                continue
            # faust commits a partition only from its committed offset on, without holes: from a
            # committed offset at or below the position the records up to it are reread (already
            # applied, acknowledged), so faust's seek stands.
            if committed is not None and committed <= at:
                continue
            try:
                await consumer.seek_wait({tp: at})
            except Exception:   # revoked meanwhile: its next owner seeks it
                log.warning("seek to the position failed", exc_info=True, extra={"tp": str(tp), "offset": at})

    def _new_producer(self) -> Any:
        producer = super()._new_producer()
        flush = producer.flush

        async def flush_with_state() -> None:
            await flush()
            if self.state_table is not None:
                await asyncio.wait_for(self.state_table.durable(), STATE_FLUSH_TIMEOUT_S)

        # Faust builds the producer from its transport (no class setting to subclass it).
        setattr(producer, "flush", flush_with_state)  # noqa: B010
        return producer


class _ReadOffsets(defaultdict[TP, int | None]):
    """faust's read offsets per partition, always unknown (None) for the input topics.

    faust's fetch loop drops every record below a partition's read offset and marks the
    offsets between two records as an acknowledged gap; with None it does neither.
    """

    def __init__(self, unfiltered: frozenset[str]) -> None:
        super().__init__(lambda: None)
        self.unfiltered = unfiltered

    def __getitem__(self, tp: TP) -> int | None:
        if tp.topic in self.unfiltered:
            return None
        return super().__getitem__(tp)


STATE_FLUSH_TIMEOUT_S = 60.0
"""Longest wait for the state's changelog before an offset commit; past it the commit fails (records redelivered)."""


class FaustPublisher:
    """Publishes reports and commands through the Faust app's producer; awaits the broker's ack.

    A report is sent only once the state that closed its window is in the changelog: a report
    that exists always has its window persisted, so a restart never computes a window a second
    time (over redelivered records in another interleaving of partitions) under an id already
    published. The other way round (state persisted, report lost) is the monitor's
    ``unpublished`` reports, published again.

    Every record carries the app id in a header (:data:`~drift.kafka.APP_ID_HEADER`): the ids
    are the same in every deployment, the header says which one published the record.
    """

    def __init__(self, app: faust.App, state: StateTable) -> None:
        self._state = state
        self._headers = provenance(app.conf.id)
        self._reports = app.topic(topics.DRIFT_REPORTS, key_serializer="raw", value_serializer="raw")
        self._commands = app.topic(topics.RETRAIN_COMMANDS, key_serializer="raw", value_serializer="raw")

    async def report(self, report: DriftReportV1) -> None:
        """Publish one report, keyed by dataset, once the state that closed its window is durable."""
        await self._state.durable()
        fut = await self._reports.send(key=report.dataset.encode(),
                                       value=encode_payload(report, event_id=report.report_id,
                                                            traceparent=current_traceparent()),
                                       headers=self._headers)
        await fut

    async def command(self, command: RetrainCommandV1) -> None:
        """Publish one retrain command, keyed by model name."""
        fut = await self._commands.send(key=command.model_name.encode(),
                                        value=encode_payload(command, event_id=command.command_id,
                                                             traceparent=current_traceparent()),
                                        headers=self._headers)
        await fut


INPUT_TOPICS: tuple[str, ...] = (topics.DATASET_SPECS, topics.MODEL_REGISTERED, topics.ROLLOUT_CHANGED, topics.FEATURES,
                                 topics.PREDICTIONS, topics.LABELS)
"""Every topic the stream's consumer group reads (its lag is exported)."""

CONTIGUOUS_TOPICS: frozenset[str] = frozenset(
    name for name in INPUT_TOPICS if topics.CATALOGUE[name].cleanup_policy == "delete")
"""Inputs whose offsets have no holes (delete policy): a record after a hole waits for a refetch."""


def _broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{h.strip()}" for h in bootstrap.split(",") if h.strip())


def build_stream(settings: Settings, *, registry: RegistryClient,
                 tracer: trace.Tracer | None = None) -> tuple[faust.App, DriftService]:
    """The Faust app and the service its agents drive; nothing connects until the app starts.

    Every record is handled in a consumer span that continues the trace of its envelope, so a
    report and a retrain command continue the trace of the feature event that closed their
    window. The window's other events are not linked (a window holds up to thousands); the
    report names them exactly by its offset ranges.
    """
    spans = tracer or trace.get_tracer("drift")
    app = StreamApp(
        settings.app_id,
        broker=_broker_url(settings.kafka_bootstrap),
        store="memory://",                  # the changelog topic is the durable copy
        datadir=settings.state_dir,
        web_enabled=False,                  # the FastAPI app serves HTTP
        autodiscover=False,
        topic_partitions=1,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        broker_session_timeout=settings.session_timeout_s,
        consumer_group_instance_id=settings.group_instance_id,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        PartitionAssignor=ActiveStandbyAssignor,   # one active member, the others hot standbys
    )
    state = StateTable(app, name="state", default=None, beacon=app.tables.beacon, partitions=1, use_partitioner=True,
                       schema=faust.Schema(key_serializer="json", value_serializer="json"))
    app.tables.add(state)
    app.state_table = state

    async def refetch(topic: str, partition: int, offset: int) -> None:
        try:   # on the consumer's thread (aiokafka is not thread-safe), see StreamApp._seek_to_positions
            await app.consumer.seek_wait({TP(topic, partition): offset})
        except Exception:  # not assigned any more: whoever gets it seeks to the positions
            log.warning("refetch seek failed", exc_info=True,
                        extra={"topic": topic, "partition": partition, "offset": offset})

    async def skip_over(topic: str, partition: int, first: int, last: int) -> None:
        # faust commits a partition up to its first offset not acknowledged; offsets that will
        # never be delivered are marked the way its own fetch loop marks them (a private method:
        # that loop no longer sees input holes, see ``_ReadOffsets``).
        await app.consumer._add_gap(TP(topic, partition), first, last)  # type: ignore[attr-defined]

    service = DriftService(settings.monitor_config(), state, references=registry, publisher=FaustPublisher(app, state),
                           retrain_window_s=settings.retrain_window_s,
                           recovery_objective_s=settings.recovery_objective_s,
                           pending_ttl_s=settings.pending_ttl_s, pending_max=settings.pending_max)
    positions = app.positions = Positions(state, refetch=refetch, contiguous=CONTIGUOUS_TOPICS,
                                          skip_over=skip_over, recorded=service.applied_through)
    dlq_topics = {name: app.topic(topics.dlq(name), key_serializer="raw", value_serializer="raw")
                  for name in (topics.FEATURES, topics.PREDICTIONS, topics.LABELS, topics.DATASET_SPECS,
                               topics.MODEL_REGISTERED, topics.ROLLOUT_CHANGED)}

    def source(name: str) -> faust.TopicT:
        return app.topic(name, key_serializer="raw", value_serializer="raw")

    async def dead_letter(event: Any, reason: str) -> None:
        msg = event.message
        fut = await dlq_topics[msg.topic].send(
            key=msg.key, value=dead_letter_bytes(topic=msg.topic, partition=msg.partition, offset=msg.offset,
                                                 key=msg.key, raw=msg.value, reason=reason))
        await fut
        metrics.RECORDS.labels(msg.topic, "dead_letter").inc()

    def agent(topic_name: str, payload_type: type[E],
              handle: Callable[[E, RecordPosition], Awaitable[object]]) -> None:
        async def process(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
            async for event in stream.events():
                msg = event.message
                if await positions.admit(msg.topic, msg.partition, msg.offset) is not Admission.APPLY:
                    yield None       # acked: the position, not faust's offset, says where to resume
                    continue
                try:
                    envelope = decode_value(event.value, payload_type)
                    with spans.start_as_current_span(f"drift.consume {msg.topic}", kind=trace.SpanKind.CONSUMER,
                                                     context=context_from(envelope.traceparent),
                                                     attributes={"messaging.destination.name": msg.topic,
                                                                 "messaging.kafka.offset": msg.offset}):
                        used = await handle(envelope.payload, RecordPosition(msg.topic, msg.partition, msg.offset))
                    metrics.RECORDS.labels(msg.topic, "skipped" if used is False else "applied").inc()
                except PoisonMessage as exc:
                    await dead_letter(event, str(exc))
                except Exception as exc:   # never let faust ack a record silently (STYLE H7)
                    log.exception("record failed; dead-lettered", extra={"topic": msg.topic, "offset": msg.offset})
                    await dead_letter(event, f"processing failed: {type(exc).__name__}: {exc}")
                positions.applied(msg.topic, msg.partition, msg.offset)   # handled or dead-lettered
                yield None

        process.__name__ = f"drift_{topic_name.replace('.', '_').replace('-', '_')}"
        app.agent(source(topic_name), name=process.__name__)(process)

    async def on_prediction(e: PredictionEventV1, at: RecordPosition) -> bool:
        return service.on_prediction(e, at)

    async def on_label(e: LabelEventV1, at: RecordPosition) -> bool:
        return service.on_label(e, at)

    async def on_spec(e: DatasetSpecRegisteredV1, _: RecordPosition) -> None:
        await service.on_spec(e)

    async def on_registered(e: ModelRegisteredV1, _: RecordPosition) -> None:
        await service.on_model_registered(e)

    async def on_rollout(e: RolloutChangedV1, _: RecordPosition) -> None:
        await service.on_rollout_changed(e)

    agent(topics.DATASET_SPECS, DatasetSpecRegisteredV1, on_spec)
    agent(topics.MODEL_REGISTERED, ModelRegisteredV1, on_registered)
    agent(topics.ROLLOUT_CHANGED, RolloutChangedV1, on_rollout)
    agent(topics.FEATURES, FeatureEventV1, service.on_features)
    agent(topics.PREDICTIONS, PredictionEventV1, on_prediction)
    agent(topics.LABELS, LabelEventV1, on_label)

    async def on_recovered() -> None:
        service.forget_monitors()
        positions.forget()
        if isinstance(app.assignor, ActiveStandbyAssignor) and not app.assignor.is_active_member:
            # A standby holds no state: should it become active again it recovers the whole
            # changelog (faust's in-memory store keeps the keys it wrote itself otherwise).
            state.drop_local()

    state.on_recover(on_recovered)
    return app, service
