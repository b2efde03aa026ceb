"""The kit's producer against the real broker.

Batch sends wait for room and report refusals; close releases librdkafka at once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from tributary_kit.producer import AsyncProducer, ProducerQueueFull

pytestmark = pytest.mark.integration


def _librdkafka_threads() -> int:
    """Threads of this process that librdkafka started (named ``rdk:...``)."""
    count = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            if (task / "comm").read_text().startswith("rdk:"):
                count += 1
        except FileNotFoundError:    # a thread that ended meanwhile
            continue
    return count


async def test_close_delivers_what_is_queued_and_releases_the_client_at_once(kafka_bootstrap: str) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.create_topics([NewTopic("kit.close-test", 1, 1)]).values():
        try:
            future.result(30)
        except Exception as exc:     # already there from an earlier run against the same broker
            assert "already exists" in str(exc), exc
    del admin
    before = _librdkafka_threads()
    producer = AsyncProducer({"bootstrap.servers": kafka_bootstrap, "client.id": "kit-close-test"})
    delivery = await producer.send("kit.close-test", b"one", key="k")
    assert delivery.ok, delivery.error
    assert _librdkafka_threads() > before
    assert producer.close(10) == 0
    # The handle is destroyed by close itself, while this object is still referenced.
    assert _librdkafka_threads() == before
    with pytest.raises(RuntimeError, match="closed"):
        producer.list_topics(1.0)


async def test_send_batch_waits_for_room_refuses_after_the_enqueue_timeout_and_reports_refused_records(
        kafka_bootstrap: str) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.create_topics([NewTopic("kit.batch-test", 2, 1)]).values():
        try:
            future.result(30)
        except Exception as exc:     # already there from an earlier run against the same broker
            assert "already exists" in str(exc), exc
    del admin
    records = [("kit.batch-test", f"v{i}".encode(), f"k{i % 5}") for i in range(200)]

    # A local queue of 8 records: the batch waits for room as the broker answers, nothing refused.
    roomy = AsyncProducer({"bootstrap.servers": kafka_bootstrap, "queue.buffering.max.messages": 8,
                           "linger.ms": 1}, enqueue_timeout_s=10)
    try:
        sent = await roomy.send_batch(records)
        assert sent.sent == 200 and sent.ok
        offsets: dict[int, list[int]] = {}
        for index in range(200):
            delivery = sent.delivery(index)
            assert delivery.ok and delivery.topic == "kit.batch-test", delivery
            offsets.setdefault(delivery.partition, []).append(delivery.offset)
        assert all(o == sorted(o) and len(set(o)) == len(o) for o in offsets.values()), offsets

        # librdkafka refuses an oversized record: raised after the records before it were answered.
        oversized = [*records[:3], ("kit.batch-test", b"x" * 2_000_000, "k0"), *records[3:6]]
        with pytest.raises(KafkaException, match=r"(?i)too large"):
            await roomy.send_batch(oversized)
    finally:
        assert roomy.close(10) == 0

    # No broker to drain the queue: the first 4 records are enqueued, the rest refused after 0.2 s,
    # and the enqueued ones carry their own failure (timed out) instead of being lost silently.
    stuck = AsyncProducer({"bootstrap.servers": "127.0.0.1:1", "queue.buffering.max.messages": 4,
                           "message.timeout.ms": 1500}, enqueue_timeout_s=0.2)
    try:
        with pytest.raises(ProducerQueueFull, match="4 of 200 records sent") as refused:
            await stuck.send_batch(records)
        assert len(refused.value.results) == 4
        assert all(not d.ok and d.error for d in refused.value.results), refused.value.results
    finally:
        stuck.close(1)
