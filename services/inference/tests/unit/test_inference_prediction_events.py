"""The prediction publisher without a broker: offered events are bounded and may drop, delivered ones
never drop, complete only when the (fake) broker acknowledged them, and keep their ids."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from inference.ids import prediction_event_id
from inference.kafka import PredictionPublisher
from inference.metrics import PREDICTION_EVENTS
from schemas.inference import PredictionEventV1
from tributary_kit.producer import Delivery, ProducerError, Record


class _Producer:
    """Holds every batch until ``release`` is set; refuses the request ids in ``refuse``."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.received = asyncio.Event()
        self.batches: list[list[Record]] = []
        self.refuse: set[str] = set()
        self.fail_next = False

    async def send_many(self, records: Sequence[Record]) -> list[Delivery]:
        self.batches.append(list(records))
        self.received.set()
        await self.release.wait()
        if self.fail_next:
            self.fail_next = False
            raise ProducerError("producer queue full")
        ids = [json.loads(r.value)["payload"]["request_id"] for r in records]
        return [Delivery(r.topic, 0, i, "refused" if rid in self.refuse else None)
                for i, (r, rid) in enumerate(zip(records, ids, strict=True))]

    def sent(self) -> list[dict[str, object]]:
        return [json.loads(r.value) for batch in self.batches for r in batch]


def _event(request_id: str, route: str = "champion", version: int = 1) -> PredictionEventV1:
    return PredictionEventV1(request_id=request_id, model_name="m", model_version=version, route=route,
                             entity_id="e", outputs={"y": [1.0]}, latency_ms=1.0, served_at=datetime.now(UTC))


def _dropped() -> float:
    return PREDICTION_EVENTS.labels("dropped")._value.get()  # type: ignore[attr-defined,no-any-return]


async def test_a_delivered_event_completes_only_once_the_broker_acknowledged_it() -> None:
    producer = _Producer()
    publisher = PredictionPublisher(producer, "predictions", queue_size=10)  # type: ignore[arg-type]
    publisher.start()
    try:
        future = publisher.deliver(_event("r-1"))
        await asyncio.wait_for(producer.received.wait(), 5)
        await asyncio.sleep(0.05)
        assert not future.done(), "done before the broker answered"
        producer.release.set()
        await asyncio.wait_for(future, 5)
        envelope = producer.sent()[0]
        assert envelope["event_id"] == prediction_event_id("r-1", "m", 1, "champion")
    finally:
        producer.release.set()
        await publisher.stop()


async def test_offered_events_are_bounded_and_delivered_ones_never_dropped() -> None:
    producer = _Producer()
    publisher = PredictionPublisher(producer, "predictions", queue_size=2)  # type: ignore[arg-type]
    dropped = _dropped()
    # Not started yet: everything stays queued.
    assert [publisher.offer(_event(f"o-{i}")) for i in range(3)] == [True, True, False]
    assert _dropped() == dropped + 1
    futures = [publisher.deliver(_event(f"d-{i}")) for i in range(5)]
    publisher.start()
    producer.release.set()
    try:
        await asyncio.wait_for(asyncio.gather(*futures), 5)
        await asyncio.wait_for(publisher.idle(), 5)
        sent = producer.sent()
        assert [e["payload"]["request_id"] for e in sent] == ["o-0", "o-1", *(f"d-{i}" for i in range(5))]
        # Once taken by the publishing task, offered events no longer count against the bound.
        assert publisher.offer(_event("o-3")) and publisher.offer(_event("o-4"))
    finally:
        await publisher.stop()


async def test_delivered_ids_are_the_same_when_a_request_is_answered_again_offered_ones_are_fresh() -> None:
    producer = _Producer()
    producer.release.set()
    publisher = PredictionPublisher(producer, "predictions", queue_size=10)  # type: ignore[arg-type]
    publisher.start()
    try:
        await asyncio.wait_for(asyncio.gather(publisher.deliver(_event("r-1")), publisher.deliver(_event("r-1")),
                                              publisher.deliver(_event("r-1", "canary", 2))), 5)
        publisher.offer(_event("r-1"))
        publisher.offer(_event("r-1"))
        await asyncio.wait_for(publisher.idle(), 5)
        ids = [e["event_id"] for e in producer.sent()]
        assert ids[0] == ids[1] != ids[2] and len(set(ids[2:])) == 3
    finally:
        await publisher.stop()


async def test_a_refused_or_unsent_event_fails_its_future_and_a_stop_cancels_the_rest() -> None:
    producer = _Producer()
    producer.refuse = {"bad"}
    producer.release.set()
    publisher = PredictionPublisher(producer, "predictions", queue_size=10)  # type: ignore[arg-type]
    publisher.start()
    try:
        good, bad = publisher.deliver(_event("good")), publisher.deliver(_event("bad"))
        await asyncio.wait_for(good, 5)
        with pytest.raises(ProducerError, match="'bad' refused"):
            await asyncio.wait_for(bad, 5)
        producer.fail_next = True
        with pytest.raises(ProducerError, match="queue full"):
            await asyncio.wait_for(publisher.deliver(_event("unsent")), 5)
        producer.release.clear()
        held = publisher.deliver(_event("held"))
        await asyncio.sleep(0.05)
    finally:
        await publisher.stop(timeout_s=0.1)
    assert held.cancelled()
