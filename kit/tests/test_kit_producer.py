"""The kit's producer against the real broker: close releases librdkafka at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from tributary_kit.producer import AsyncProducer

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
