"""The kit producer's lean batch send (``send_values``) and delivery reports served on the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from tributary_kit.producer import Acked, AsyncProducer

TOPIC = "kit.send-values-test"


class _Refusal:
    def __init__(self, reason: str) -> None:
        self.reason = reason

    def str(self) -> str:
        return self.reason


class _Report:
    def __init__(self, value: bytes) -> None:
        self._value = value

    def value(self) -> bytes:
        return self._value


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_a_fully_acknowledged_batch_keeps_no_record(loop: asyncio.AbstractEventLoop) -> None:
    acked = Acked(loop)
    for value in (b"a", b"b"):
        acked.on_delivery(None, _Report(value))  # type: ignore[arg-type]
    acked.seal(2)
    assert acked.ok
    assert acked.future.done()
    assert acked.errors([b"a", b"b"]) == {}


def test_refused_records_are_found_by_value_in_order(loop: asyncio.AbstractEventLoop) -> None:
    acked = Acked(loop)
    values = [b"a", b"same", b"c", b"same"]
    reports: list[tuple[Any, bytes]] = [(None, b"a"), (_Refusal("too large"), b"same"), (None, b"c"),
                                         (_Refusal("timed out"), b"same")]
    for err, value in reports:
        acked.on_delivery(err, _Report(value))  # type: ignore[arg-type]
    acked.seal(4)
    assert not acked.ok
    assert acked.errors(values) == {1: "too large", 3: "timed out"}


def test_only_the_records_that_were_sent_are_matched(loop: asyncio.AbstractEventLoop) -> None:
    acked = Acked(loop)
    acked.on_delivery(_Refusal("timed out"), _Report(b"b"))  # type: ignore[arg-type]
    acked.seal(1)  # the queue stayed full after the first record
    assert acked.errors([b"b", b"b"]) == {0: "timed out"}


@pytest.mark.integration
@pytest.mark.parametrize("on_loop", [True, False], ids=["reports-on-loop", "reports-on-thread"])
async def test_send_values_answers_once_the_broker_acknowledged_every_record(kafka_bootstrap: str,
                                                                            on_loop: bool) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.create_topics([NewTopic(TOPIC, 3, 1)]).values():
        try:
            future.result(30)
        except Exception as exc:     # already there from an earlier run against the same broker
            assert "already exists" in str(exc), exc
    del admin
    producer = AsyncProducer({"bootstrap.servers": kafka_bootstrap, "client.id": "kit-values-test"},
                             reports_on_loop=on_loop)
    try:
        values = [f"v{i}".encode() for i in range(500)]
        acked = await producer.send_values(TOPIC, values, [f"k{i % 7}" for i in range(500)])
        assert acked.ok and acked.sent == 500 and acked.errors(values) == {}
        # The per-record send shares the reports server, also concurrently with send_values.
        single, again = await asyncio.gather(producer.send(TOPIC, b"one", key="k"),
                                             producer.send_values(TOPIC, [b"x", b"y"], ["k1", "k2"]))
        assert single.ok and single.offset >= 0
        assert again.ok and again.sent == 2
    finally:
        assert producer.close(10) == 0
