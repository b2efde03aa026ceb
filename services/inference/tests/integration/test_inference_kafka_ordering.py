"""The Kafka request path against the real broker: a request's offset is stored only after its answer
and its prediction event were acknowledged, and a request answered again republishes the same event id.

The consumer, the producers, the topics and the consumer group are real; the model is a fake backend
(Triton plays no part in the ordering). Two things are wrapped to observe the order: the prediction
producer, which holds its batches until the test releases them (and notes when the broker
acknowledged each event), and the consumer's ``store_offsets`` (noting when each offset was stored).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from inference.canary import CanaryStats, LabelJoin
from inference.consumer import RequestHandler
from inference.errors import ModelNotFound
from inference.ids import prediction_event_id
from inference.kafka import EventConsumer, PredictionPublisher, build_consumer, build_producer
from inference.routing import ModelRoute
from inference.service import InferenceService
from inference.settings import Settings
from inference.shadow import ShadowMirror
from inference.tensors import Signature, Spec, Tensor
from opentelemetry import trace
from schemas.inference import InferenceRequestedV1, TensorValue
from tributary_kit.codec import encode_event
from tributary_kit.producer import AsyncProducer, Delivery, Record

from services.inference.tests.integration.conftest import make_topics
from tests.fixtures.kafka import consume

pytestmark = pytest.mark.integration

HOLD_S = 6.0
"""How long the prediction events are held: past librdkafka's auto-commit interval (5 s), so an
offset stored too early would also have reached the broker."""


class _Rollout:
    loaded = True

    def route(self, model: str) -> ModelRoute:
        if model != "m":
            raise ModelNotFound(f"model {model!r} has no rollout")
        return ModelRoute("m", champion=1, canary=2, canary_weight=0.5)


class _Backend:
    """Answers ``y = 10 * version + x[0]`` per row."""

    name = "triton"

    async def infer(self, model: str, version: int, inputs: list[Tensor], outputs: list[str] | None, *,
                    timeout_s: float, request_id: str = "") -> list[Tensor]:
        return [Tensor("y", "FP32", (inputs[0].array[:, :1] + 10 * version).astype(np.float32))]

    async def signature(self, model: str, version: int) -> Signature:
        return Signature([Spec("x", "FP32", (-1, 4))], [Spec("y", "FP32", (-1, 1))], 8)

    async def ready(self) -> bool:
        return True

    async def model_ready(self, model: str, version: int) -> bool:
        return True

    async def close(self) -> None:
        pass


def _request_id(value: bytes | None) -> str:
    return str(json.loads(value or b"{}")["payload"]["request_id"])


class _HeldProducer:
    """The real prediction producer behind a gate; notes when the broker acknowledged each event.

    ``refuse_once``: the next batch is sent for real but reported as refused (a lost acknowledgement).
    """

    def __init__(self, inner: AsyncProducer) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.held: list[str] = []
        self.acked_at: dict[str, float] = {}
        self.refuse_once = False

    async def send_many(self, records: Sequence[Record]) -> list[Delivery]:
        self.held.extend(_request_id(r.value) for r in records)
        await self.gate.wait()
        deliveries = await self.inner.send_many(records)
        if self.refuse_once:
            self.refuse_once = False
            return [Delivery(d.topic, d.partition, -1, "acknowledgement lost (test)") for d in deliveries]
        now = time.monotonic()
        for record, delivery in zip(records, deliveries, strict=True):
            if delivery.ok:
                self.acked_at.setdefault(_request_id(record.value), now)
        return deliveries


class _SpyConsumer:
    """The real consumer; notes the request ids of each batch read, and each stored offset with its
    request id and the time."""

    def __init__(self, inner: Consumer) -> None:
        self._inner = inner
        self.batches: list[list[str]] = []
        self.stored: list[tuple[str, int, int, float]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        messages: list[Message] = self._inner.consume(num_messages, timeout)
        if messages:
            self.batches.append([_request_id(m.value()) for m in messages if m.error() is None])
        return messages

    def store_offsets(self, message: Message) -> None:
        self.stored.append((_request_id(message.value()), message.partition(), message.offset(), time.monotonic()))
        self._inner.store_offsets(message)


def _send_requests(bootstrap: str, topic: str, ids: list[str]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for n, rid in enumerate(ids):
        row = TensorValue(name="x", datatype="FP32", shape=[1, 4], data=[float(n), 0.0, 0.0, 0.0])
        request = InferenceRequestedV1(request_id=rid, model_name="m", entity_id=f"e{n}",
                                       requested_at=datetime.now(UTC), inputs=[row])
        producer.produce(topic, encode_event(request, event_id=str(uuid.uuid4()), source="test",
                                             occurred_at=datetime.now(UTC)), f"e{n}")
    assert producer.flush(30) == 0


def _committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets on the broker, by partition (-1001: none)."""
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        partitions = reader.list_topics(topic, timeout=10).topics[topic].partitions
        return {tp.partition: tp.offset
                for tp in reader.committed([TopicPartition(topic, p) for p in partitions], timeout=10)}
    finally:
        reader.close()


async def _until(check: Any, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        await asyncio.sleep(0.05)


async def test_request_offsets_are_stored_only_after_their_prediction_events_are_acknowledged(
        kafka_bootstrap: str) -> None:
    run = uuid.uuid4().hex[:8]
    topics = {k: f"test.ordering.{k}.{run}" for k in ("requests", "responses", "predictions")}
    await asyncio.to_thread(make_topics, kafka_bootstrap, *topics.values())
    settings = Settings(triton_grpc_url="127.0.0.1:9", redis_url="redis://127.0.0.1:9", kafka_bootstrap=kafka_bootstrap,
                        group_suffix=f"-ordering-{run}", request_topic=topics["requests"],
                        response_topic=topics["responses"], predictions_topic=topics["predictions"])
    group = settings.requests_group_id + settings.group_suffix
    producer = build_producer(settings)
    held = _HeldProducer(build_producer(settings, linger_ms=settings.prediction_linger_ms))
    publisher = PredictionPublisher(held, topics["predictions"], queue_size=100)  # type: ignore[arg-type]
    stats = CanaryStats()
    service = InferenceService(
        rollout=_Rollout(), backend=_Backend(), fallback=None,  # type: ignore[arg-type]
        mirror=ShadowMirror(lambda *a: asyncio.sleep(0, []), lambda *a: None, queue_size=1, workers=1),
        predictions=publisher, stats=stats, labels=LabelJoin(stats, 10), store=None,  # type: ignore[arg-type]
        timeout_s=1.0, max_inflight=100, compare_canary=False)
    spy = _SpyConsumer(build_consumer(settings, group_id=settings.requests_group_id, client_id="ordering-test"))
    consumer = EventConsumer(spy, topic=topics["requests"], payload_type=InferenceRequestedV1,  # type: ignore[arg-type]
                             handle=RequestHandler(service, producer, response_topic=topics["responses"],
                                                   tracer=trace.get_tracer("test")),
                             producer=producer, replay=False, name="requests", batch_size=64, retry_backoff_s=0.2)
    publisher.start()
    task = asyncio.create_task(consumer.run(), name="ordering-consumer")
    try:
        # 1. Events held: the answers reach the broker, the offsets stay unstored and uncommitted.
        #    The consumer waits for a batch's events before it reads on, so only the first batch it
        #    read (all 20 requests, or on a loaded machine those of the partitions fetched first) is
        #    answered while the events are held.
        first = [f"a-{run}-{i}" for i in range(20)]
        await asyncio.to_thread(_send_requests, kafka_bootstrap, topics["requests"], first)
        await _until(lambda: len(held.held) > 0, "the first batch's prediction events reaching the producer")
        await asyncio.sleep(HOLD_S)  # a negative check: nothing may be stored or committed meanwhile
        assert len(spy.batches) == 1, "a batch was read before the previous one's events were acknowledged"
        batch = set(spy.batches[0])
        assert set(held.held) <= batch <= set(first), (held.held, batch)
        answers = await asyncio.to_thread(consume, kafka_bootstrap, topics["responses"], count=len(batch),
                                          timeout_s=60)
        assert {_request_id(m.value()) for m in answers} == batch
        assert spy.stored == [], "offsets stored while their prediction events were unacknowledged"
        committed = await asyncio.to_thread(_committed, kafka_bootstrap, group, topics["requests"])
        assert all(o < 0 for o in committed.values()), committed

        # 2. Released: each offset is stored after its request's event was acknowledged.
        held.gate.set()
        await _until(lambda: {s[0] for s in spy.stored} >= set(first), "the offsets of the first requests")
        answers = await asyncio.to_thread(consume, kafka_bootstrap, topics["responses"], count=len(first),
                                          timeout_s=60)
        assert sorted(_request_id(m.value()) for m in answers) == sorted(first)
        early = [(rid, at - held.acked_at[rid]) for rid, _, _, at in spy.stored if at < held.acked_at.get(rid, 1e18)]
        assert early == [], early

        # 3. An acknowledgement lost: the batch is answered again, the offsets wait for the retry,
        #    and the event republished for a request carries the same event id.
        held.refuse_once = True
        again = [f"b-{run}-{i}" for i in range(10)]
        await asyncio.to_thread(_send_requests, kafka_bootstrap, topics["requests"], again)
        await _until(lambda: {s[0] for s in spy.stored} >= set(again), "the offsets of the second requests")
        assert all(at >= held.acked_at[rid] for rid, _, _, at in spy.stored), "an offset stored before its ack"
        assert any(Counter(held.held)[rid] >= 2 for rid in again), "the refused batch was not retried"
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 30)  # closing the consumer commits the stored offsets
        await publisher.stop()
        await asyncio.to_thread(producer.close, 10)
        await asyncio.to_thread(held.inner.close, 10)

    ends = {}
    probe = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"probe-{run}"})
    with contextlib.closing(probe):
        for p in range(3):
            ends[p] = (await asyncio.to_thread(probe.get_watermark_offsets, TopicPartition(topics["requests"], p),
                                               10))[1]
    assert await asyncio.to_thread(_committed, kafka_bootstrap, group, topics["requests"]) == ends

    # Every event the producer held was sent (the refused batch too): read them all.
    events = await asyncio.to_thread(consume, kafka_bootstrap, topics["predictions"], count=len(held.held),
                                     timeout_s=30)
    ids_by_request: dict[str, set[str]] = {}
    for m in events:
        envelope = json.loads(m.value() or b"{}")
        payload = envelope["payload"]
        assert envelope["event_id"] == prediction_event_id(payload["request_id"], "m", payload["model_version"],
                                                           payload["route"])
        ids_by_request.setdefault(payload["request_id"], set()).add(envelope["event_id"])
    assert set(ids_by_request) == set(first) | set(again)
    assert all(len(ids) == 1 for ids in ids_by_request.values()), "a request's events carry different ids"
