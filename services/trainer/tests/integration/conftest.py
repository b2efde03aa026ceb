"""The real registry (``python -m registry`` on SQLite) and helpers to put synthetic data on the real broker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer
from schemas.dataset import DatasetSpec, DatasetSpecRegisteredV1
from schemas.envelope import Envelope, Event
from schemas.ingest import FeatureEventV1, LabelEventV1
from schemas.topics import CATALOGUE, DATASET_SPECS, FEATURES, LABELS, TopicSpec, dlq
from trainer.ledger import Ledger
from trainer.service import TrainerService
from trainer.settings import Settings
from tributary_kit.admin import ensure_topics
from tributary_kit.codec import encode

from deploy.localstack import ServiceProcess, StartError, free_port


@dataclass(frozen=True)
class Registry:
    """A running registry: its URL and a token with the trainer and operator roles."""

    url: str
    token: str

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.url}{path}", timeout=30)
        return response.json() if response.status_code == 200 else None

    def set_alias(self, model: str, alias: str, version: int) -> None:
        response = httpx.put(f"{self.url}/v1/models/{model}/aliases/{alias}", timeout=30,
                             headers={"Authorization": f"Bearer {self.token}"},
                             json={"version": version, "reason": "test"})
        assert response.status_code == 200, response.text


@pytest.fixture(scope="session")
def topics(kafka_bootstrap: str) -> None:
    """Every catalogue topic exists."""
    ensure_topics(kafka_bootstrap, CATALOGUE.values(), timeout_s=60)


@pytest.fixture(scope="session")
def registry(kafka_bootstrap: str, topics: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """The real registry service on a SQLite file, with a trainer+operator token made by its CLI."""
    data = tmp_path_factory.mktemp("registry")
    port = free_port()
    env = {"REGISTRY_DATA_DIR": str(data), "REGISTRY_KAFKA_BOOTSTRAP": kafka_bootstrap, "REGISTRY_PORT": str(port),
           "REGISTRY_LOG_LEVEL": "WARNING"}
    made = subprocess.run([sys.executable, "-m", "registry.cli", "tokens", "create", "--name", "trainer-ci",
                           "--role", "trainer", "--role", "operator"], env={**os.environ, **env},
                          capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.fail(f"could not create a registry token: {made.stderr}", pytrace=False)
    process = ServiceProcess("registry", "registry", env, ready_url=f"http://127.0.0.1:{port}/readyz",
                             log_path=data / "registry.log")
    try:
        process.start()
    except StartError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield Registry(f"http://127.0.0.1:{port}", made.stdout.strip().splitlines()[-1])
    finally:
        process.stop()


def _produce(bootstrap: str, records: list[tuple[str, str, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                         "linger.ms": 5})
    for topic, key, value in records:
        producer.produce(topic, value, key)
        producer.poll(0)
    assert producer.flush(30) == 0


def _wrap(event: Event) -> bytes:
    return encode(Envelope.wrap(event, event_id=str(uuid.uuid4()), source="test", occurred_at=datetime.now(UTC)))


def publish_spec(bootstrap: str, spec: DatasetSpec) -> None:
    """Register ``spec`` on the compacted spec topic, as ingest does."""
    _produce(bootstrap, [(DATASET_SPECS, spec.name, _wrap(DatasetSpecRegisteredV1(spec=spec, revision=1)))])


def publish_rows(bootstrap: str, dataset: str, rows: list[dict[str, Any]], *, labels: str = "mixed",
                 duplicates: int = 0) -> None:
    """Feature events for ``rows``, and their labels.

    ``labels``: ``inline`` (in the feature event), ``events`` (label events joined by feature
    event id for even rows and by entity and time for odd ones), ``mixed`` (a third each), ``none``.
    """
    records: list[tuple[str, str, bytes]] = []
    label_records: list[tuple[str, str, bytes]] = []
    for i, row in enumerate(rows):
        mode = labels if labels != "mixed" else ("inline", "by-id", "by-entity")[i % 3]
        if mode == "events":
            mode = ("by-id", "by-entity")[i % 2]
        inline = row["label"] if mode == "inline" else None
        feature = FeatureEventV1(event_id=row["event_id"], dataset=dataset, entity_id=row["entity_id"],
                                 event_time=row["event_time"], features=row["features"], label=inline)
        records.append((FEATURES, row["entity_id"], _wrap(feature)))
        if mode in ("by-id", "by-entity"):
            label = LabelEventV1(event_id=f"label-{row['event_id']}", dataset=dataset, entity_id=row["entity_id"],
                                 event_time=row["event_time"], label=row["label"],
                                 feature_event_id=row["event_id"] if mode == "by-id" else None)
            label_records.append((LABELS, row["entity_id"], _wrap(label)))
    records += records[:duplicates]  # at-least-once upstream: the same events again
    _produce(bootstrap, records + label_records)


@pytest.fixture
def dataset(kafka_bootstrap: str, topics: None, unique: str,
            make_spec: Callable[..., DatasetSpec]) -> Callable[..., str]:
    """``dataset(rows, labels="mixed", label="binary")``: a fresh dataset with its spec and ``rows`` on Kafka."""
    counter = iter(range(1000))

    def make(rows: list[dict[str, Any]], *, labels: str = "mixed", label: str = "binary", duplicates: int = 0) -> str:
        name = f"ds-{unique}-{next(counter)}"
        publish_spec(kafka_bootstrap, make_spec(name, label))
        publish_rows(kafka_bootstrap, name, rows, labels=labels, duplicates=duplicates)
        return name

    return make


@pytest.fixture
def settings(kafka_bootstrap: str, registry: Registry, unique: str) -> Settings:
    """Trainer settings on the real broker and registry: a small network, few epochs, small slices gated."""
    return Settings(kafka_bootstrap=kafka_bootstrap, registry_url=registry.url, registry_token=registry.token,
                    hidden_layers=[16, 8], batch_size=64, max_epochs=15, patience=4, min_rows=50,
                    gate_min_slice_rows=40, gate_margin=0.03, gate_slice_margin=0.06, read_timeout_s=60,
                    startup_timeout_s=60, group_id=f"trainer-{unique}", retry_backoff_s=0.2, log_json=False,
                    command_topic=f"test.trainer.commands.{unique}")


@pytest.fixture
def command_topic(kafka_bootstrap: str, settings: Settings) -> str:
    """The test's own command topic (and its dead-letter topic)."""
    base = CATALOGUE["training.retrain-command.v1"]
    ensure_topics(kafka_bootstrap, [
        TopicSpec(name=settings.command_topic, event_type=base.event_type, key=base.key, partitions=1),
        TopicSpec(name=dlq(settings.command_topic), event_type="deadletter.dead-letter.v1", key="original key",
                  partitions=1),
    ], timeout_s=60)
    return settings.command_topic


@pytest.fixture
def service(settings: Settings) -> Iterator[TrainerService]:
    """The trainer core on the real broker and registry, with an in-memory ledger."""
    from trainer.app import build_service

    core = build_service(settings, Ledger())
    yield core
    core.registry.close()
    if core.triton is not None:
        core.triton.close()


def wait_for(condition: Callable[[], Any], *, timeout_s: float = 60.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def here() -> Path:
    return Path(__file__).parent
