"""Topic creation from the catalogue, and broker reachability."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from schemas.topics import TopicSpec

log = logging.getLogger(__name__)


class TopicSetupError(Exception):
    """Topics could not be created or did not appear in time."""


def ensure_topics(bootstrap: str, specs: Iterable[TopicSpec], *, timeout_s: float = 30.0,
                  replication_factor: int = 1) -> list[str]:
    """Create every topic of ``specs`` that does not exist yet; return the names created.

    Existing topics are left as they are (their partitions and configs are not changed).
    Waits until every partition of every topic has a leader, so the topics are usable at once.

    Raises:
        TopicSetupError: the broker refused a topic or did not answer within ``timeout_s``.

    """
    specs = list(specs)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise TopicSetupError(f"broker at {bootstrap} did not answer: {exc}") from exc
    missing = [s for s in specs if s.name not in existing]
    created: list[str] = []
    if missing:
        futures = admin.create_topics(
            [NewTopic(s.name, num_partitions=s.partitions, replication_factor=replication_factor,
                      config=s.config()) for s in missing],
            operation_timeout=timeout_s,
            request_timeout=timeout_s,
        )
        for name, future in futures.items():
            try:
                future.result()
                created.append(name)
            except KafkaException as exc:
                if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue  # another service created it first
                raise TopicSetupError(f"could not create topic {name}: {exc}") from exc
    deadline = time.monotonic() + timeout_s
    wanted = {s.name for s in specs}
    while True:
        topics = admin.list_topics(timeout=timeout_s).topics
        not_ready = sorted(
            name for name in wanted
            if name not in topics or topics[name].error is not None
            or not topics[name].partitions
            or any(p.leader < 0 or p.error is not None for p in topics[name].partitions.values())
        )
        if not not_ready:
            break
        if time.monotonic() > deadline:
            raise TopicSetupError(f"topics without a leader after {timeout_s}s: {not_ready}")
        time.sleep(0.1)
    if created:
        log.info("created topics", extra={"topics": created})
    return created
