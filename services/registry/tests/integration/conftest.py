"""Fixtures of the registry's integration tests: settings on real Kafka and databases, tokens, consumers."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer
from registry.db import SqlModelStore, make_engine
from registry.domain import Role
from registry.migrations import upgrade_to_head
from registry.service import EventTopics, Limits, RegistryService
from registry.settings import Settings
from registry.storage import LocalArtifactStore


@pytest.fixture
def settings(tmp_path: Path, database_url: str, kafka_bootstrap: str) -> Settings:
    """Registry settings on a fresh database, the real broker and topics of this test only."""
    suffix = uuid.uuid4().hex[:10]
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        kafka_bootstrap=kafka_bootstrap,
        model_registered_topic=f"test.registry.model-registered.{suffix}",
        rollout_changed_topic=f"test.registry.rollout-changed.{suffix}",
        max_artifact_bytes=64 * 1024,
        outbox_poll_interval_s=0.2,
    )


def offline_service(settings: Settings) -> tuple[RegistryService, Callable[[], None]]:
    """A core on the settings' database with no app, producer or drainer (like a crashed process)."""
    upgrade_to_head(settings.db_url)
    engine = make_engine(settings.db_url)
    service = RegistryService(
        store=SqlModelStore(engine),
        artifacts=LocalArtifactStore(settings.artifact_root),
        limits=Limits(settings.max_artifact_bytes, settings.min_opset, settings.max_opset),
        topics=EventTopics(settings.model_registered_topic, settings.rollout_changed_topic),
    )
    return service, engine.dispose


@pytest.fixture
def tokens(settings: Settings) -> dict[str, str]:
    """Bearer tokens by role: ``trainer``, ``operator``, ``both``, ``revoked``."""
    service, close = offline_service(settings)
    try:
        made = {
            "trainer": service.issue_token("trainer-ci", [Role.TRAINER]),
            "operator": service.issue_token("alice", [Role.OPERATOR]),
            "both": service.issue_token("admin", [Role.TRAINER, Role.OPERATOR]),
            "revoked": service.issue_token("mallory", [Role.TRAINER, Role.OPERATOR]),
        }
        service.revoke_tokens("mallory")
    finally:
        close()
    return made


@pytest.fixture
def consume(kafka_bootstrap: str) -> Iterator[Callable[[str, int], list[tuple[str, bytes]]]]:
    """``consume(topic, n)``: the first ``n`` records (key, value) of ``topic``, read with a fresh consumer."""
    consumers: list[Consumer] = []

    def read(topic: str, n: int, timeout_s: float = 30.0) -> list[tuple[str, bytes]]:
        consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"test-{uuid.uuid4().hex}",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False})
        consumers.append(consumer)
        consumer.subscribe([topic])
        records: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < n and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            records.append(((msg.key() or b"").decode(), msg.value()))
        return records

    yield read
    for consumer in consumers:
        consumer.close()


def _wait_for(condition: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def wait_for() -> Callable[..., None]:
    """``wait_for(condition, timeout_s=30, what=...)``: poll until true, fail at the deadline."""
    return _wait_for


@pytest.fixture
def offline() -> Callable[[Settings], tuple[RegistryService, Callable[[], None]]]:
    """``offline(settings)``: a core on the database with no app, producer or drainer, and its closer."""
    return offline_service
