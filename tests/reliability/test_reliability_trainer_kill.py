"""The trainer killed with ``SIGKILL`` while its model upload is in flight, then restarted (plan K9 (a)).

Setup: a registry process (SQLite, artifacts on local disk) and a trainer process
(``python -m trainer``) with its own one-partition command topic and consumer group. The trainer's
network has two 2048-wide hidden layers, so each model is a 16 MiB ONNX file. Three retrain
commands A, B, C for one model each replay exact offsets of a dataset of their own.

Fault: the trainer is killed with ``SIGKILL`` while its upload of A's model is in flight. The test
watches the registry's staging folder from outside: the file appears when the registry has the
upload and is hashing and validating it, and the trainer is waiting for the answer. The registry
finishes the request of the dead client. Then the trainer is restarted as a new process under the
same static group membership (``TRAINER_GROUP_INSTANCE_ID``), with a session timeout (60 s) far
longer than a restart.

Pass criteria:
- nothing of A was published before the restart (the kill came before the outcome);
- the restarted trainer holds the command partition well before the dead member's session could
  have expired (static membership: the new process takes the old member's place), and A is
  redelivered and completes; B and C complete too;
- each of A, B, C has exactly one ``training-completed`` outcome (promoted) and exactly one
  registry version (``params.command_id``); the model has exactly 3 versions;
- each outcome names the version registered for its command, and its sha256 is that version's;
- every version's artifact downloads and hashes to its recorded sha256; no staged upload is left;
- when the registry kept A's upload, the restarted trainer reuses that version (its log says so);
- the group's committed offset is past C (every command acknowledged), and the restarted trainer
  counts 3 promoted and no failed, retried or dead-lettered commands.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient
from schemas.topics import CATALOGUE, FEATURES, LABELS, TopicSpec, dlq
from schemas.training import OffsetRange, TrainingWindow
from trainer.kafka import event_bytes
from trainer.service import new_command
from tributary_kit.admin import ensure_topics

from deploy.localstack import ServiceProcess, free_port
from services.trainer.tests.conftest import spec_for, synthetic_rows
from services.trainer.tests.integration.conftest import publish_rows, publish_spec
from tests.fixtures.kafka import end_offsets
from tests.reliability.processes import committed_offset, kill9, read_topic, restart, wait_for
from tests.reliability.test_reliability_registry import Registry

pytestmark = pytest.mark.integration

COMPLETED = CATALOGUE["training.training-completed.v1"].name
FAILED = CATALOGUE["training.training-failed.v1"].name
ROWS = 300
"""Rows of each command's dataset (204 training rows: one optimisation step per epoch)."""


def operator_token(registry: Registry) -> str:
    """A registry token with the ``operator`` role (the trainer moves the canary alias with it)."""
    cli = Path(sys.executable).with_name("tributary-registry-cli")
    done = subprocess.run([str(cli), "tokens", "create", "--name", "trainer-operator", "--role", "operator"],
                          env=registry.process.env, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip().splitlines()[-1]


def make_command_topic(bootstrap: str, topic: str) -> None:
    """A one-partition command topic (one command at a time, in order) and its dead-letter topic."""
    base = CATALOGUE["training.retrain-command.v1"]
    ensure_topics(bootstrap, [
        TopicSpec(name=topic, event_type=base.event_type, key=base.key, partitions=1),
        TopicSpec(name=dlq(topic), event_type="deadletter.dead-letter.v1", key="original key", partitions=1),
    ], timeout_s=60)


def watermarks(bootstrap: str, names: tuple[str, ...] = (FEATURES, LABELS)) -> dict[str, dict[int, int]]:
    """High watermarks of ``names`` (polled until each partition has a leader)."""

    def read() -> dict[str, dict[int, int]] | None:
        try:
            return {t: end_offsets(bootstrap, t) for t in names}
        except KafkaException:  # a topic just created: its partitions have no leader yet
            return None

    return wait_for(read, f"the watermarks of {names}", 60, every_s=0.5)


def exact_window(before: dict[str, dict[int, int]], after: dict[str, dict[int, int]]) -> TrainingWindow:
    """The offsets written between two watermark snapshots of the feature and label topics."""
    return TrainingWindow(offsets=[OffsetRange(topic=t, partition=p, start_offset=before[t].get(p, 0),
                                               end_offset=high) for t in (FEATURES, LABELS)
                                   for p, high in sorted(after[t].items())])


def metric(text: str, name: str, labels: str = "") -> float:
    """One sample of a Prometheus text exposition (0 when absent)."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0


SESSION_S = 60.0
"""The trainer's session timeout here: a redelivery that waited for it would be plain to see."""


def holders(bootstrap: str, group: str) -> dict[str, set[tuple[str, int]]]:
    """Member id -> the topic partitions it holds, for the members of ``group`` with a static instance id."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    (future,) = admin.describe_consumer_groups([group], request_timeout=10).values()
    try:
        description = future.result(timeout=15)
    except KafkaException:
        return {}
    return {m.member_id: {(tp.topic, tp.partition) for tp in (m.assignment.topic_partitions if m.assignment else [])}
            for m in description.members if m.group_instance_id}


def test_trainer_killed_mid_upload_completes_the_redelivered_command_with_exactly_one_version(
        kafka_bootstrap: str, tmp_path: Path, unique: str) -> None:
    started = time.monotonic()
    registry = Registry(tmp_path / "registry", kafka_bootstrap)
    trainer: ServiceProcess | None = None
    try:
        model = f"k9a-{unique}"
        command_topic = f"test.trainer.k9a.{unique}"
        group = f"trainer-k9a-{unique}"
        make_command_topic(kafka_bootstrap, command_topic)
        # Every topic involved has a leader before the watermarks are read (a fresh session broker).
        ensure_topics(kafka_bootstrap, CATALOGUE.values(), timeout_s=60)
        watermarks(kafka_bootstrap, (FEATURES, LABELS, COMPLETED, FAILED, command_topic))

        port = free_port()
        env = {"TRAINER_KAFKA_BOOTSTRAP": kafka_bootstrap, "TRAINER_PORT": str(port),
               "TRAINER_REGISTRY_URL": registry.url, "TRAINER_REGISTRY_TOKEN": registry.token,
               "TRAINER_REGISTRY_OPERATOR_TOKEN": operator_token(registry),
               "TRAINER_COMMAND_TOPIC": command_topic, "TRAINER_GROUP_ID": group,
               "TRAINER_HIDDEN_LAYERS": "[2048, 2048]", "TRAINER_MAX_EPOCHS": "3", "TRAINER_PATIENCE": "3",
               "TRAINER_GATE_MIN_SLICE_ROWS": "40", "TRAINER_RETRY_BACKOFF_S": "0.5",
               "TRAINER_STARTUP_TIMEOUT_S": "60", "TRAINER_READ_TIMEOUT_S": "60", "TRAINER_LOG_JSON": "false",
               "TRAINER_GROUP_INSTANCE_ID": f"trainer-k9a-{unique}", "TRAINER_SESSION_TIMEOUT_S": str(SESSION_S)}
        url = f"http://127.0.0.1:{port}"
        trainer = ServiceProcess("trainer", "trainer", env, ready_url=f"{url}/readyz",
                                 log_path=tmp_path / "trainer.log")
        trainer.start()   # its consumer joins the group while the data is written

        commands = []
        for i, label in enumerate("ABC"):
            dataset = f"k9a-{unique}-{label.lower()}"
            before = watermarks(kafka_bootstrap)
            publish_spec(kafka_bootstrap, spec_for(dataset))
            publish_rows(kafka_bootstrap, dataset, synthetic_rows(ROWS, seed=900 + i), labels="mixed")
            after = watermarks(kafka_bootstrap)
            commands.append(new_command(model_name=model, dataset=dataset, reason="manual", requested_by="k9a",
                                        window=exact_window(before, after), command_id=f"k9a-{unique}-{label}"))
        ids = [c.command_id for c in commands]

        producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
        for command in commands:
            producer.produce(command_topic, event_bytes(command), model)
        assert producer.flush(30) == 0
        sent_at = time.monotonic()

        # The kill: as soon as the registry holds A's upload (the first one), while the trainer waits.
        wait_for(registry.staged, "the trainer's upload of A to be staged in the registry", 120, every_s=0.005)
        dead_member = set(holders(kafka_bootstrap, group))
        kill9(trainer)
        killed_at = time.monotonic()
        at_kill = [v["params"]["command_id"] for v in registry.versions(model)]
        assert at_kill in ([], [ids[0]]), at_kill

        # The registry finishes the dead client's request: A's version is committed or discarded, nothing between.
        wait_for(lambda: not registry.staged(), "the registry to finish the orphaned upload", 60)
        kept = [v["params"]["command_id"] for v in registry.versions(model)]
        assert kept in ([], [ids[0]]), kept

        def outcomes() -> list[dict[str, Any]]:
            return [r.value["payload"] for r in read_topic(
                kafka_bootstrap, COMPLETED,
                match=lambda r: r.value.get("payload", {}).get("command_id") in ids)]

        def failures() -> list[dict[str, Any]]:
            return [r.value["payload"] for r in read_topic(
                kafka_bootstrap, FAILED,
                match=lambda r: r.value.get("payload", {}).get("command_id") in ids)]

        assert outcomes() == [], "an outcome was published before the kill: the kill came too late"

        restart(trainer)
        restarted_at = time.monotonic()
        # Static membership: the restarted process takes the dead member's place without waiting out its session.
        assert len(dead_member) == 1, dead_member
        wait_for(lambda: [tps for member, tps in holders(kafka_bootstrap, group).items()
                          if member not in dead_member] == [{(command_topic, 0)}],
                 lambda: f"a new member to hold {command_topic}[0] in place of {dead_member} (group: "
                         f"{holders(kafka_bootstrap, group)})", SESSION_S, every_s=0.25)
        reassigned_s = time.monotonic() - restarted_at
        assert reassigned_s < SESSION_S / 2, reassigned_s
        done = wait_for(lambda: (found := outcomes()) and {o["command_id"] for o in found} == set(ids) and found,
                        lambda: f"outcomes of {ids} (have {[o['command_id'] for o in outcomes()]}; trainer log:\n"
                                f"{trainer.tail() if trainer else ''})", 180, every_s=1.0)
        completed_at = time.monotonic()

        by_command = {c: [o for o in done if o["command_id"] == c] for c in ids}
        assert all(len(found) == 1 for found in by_command.values()), {c: len(f) for c, f in by_command.items()}
        assert failures() == []
        versions = registry.versions(model)
        assert sorted(v["params"]["command_id"] for v in versions) == sorted(ids), versions
        assert [v["version"] for v in versions] == [1, 2, 3]
        by_version = {v["version"]: v for v in versions}
        for c in ids:
            (outcome,) = by_command[c]
            assert outcome["outcome"] == "promoted", outcome
            registered = by_version[outcome["version"]]
            assert registered["params"]["command_id"] == c
            assert outcome["sha256"] == registered["sha256"], (c, outcome["sha256"], registered["sha256"])
        for v in versions:  # every version is whole: its download hashes to the recorded sha256
            got = httpx.get(f"{registry.url}/v1/models/{model}/versions/{v['version']}/artifact", timeout=120)
            assert got.status_code == 200, got.text[:300]
            assert hashlib.sha256(got.content).hexdigest() == v["sha256"]
            assert len(got.content) > 16 * 1024 * 1024
        assert registry.staged() == []
        log = trainer.log_path.read_text(errors="replace")
        if kept:
            assert "reusing the version registered for this command" in log, trainer.tail()

        assert committed_offset(kafka_bootstrap, group, command_topic) == len(ids)
        scraped = httpx.get(f"{url}/metrics", timeout=30).text
        counts = {o: metric(scraped, "trainer_commands_total", f'outcome="{o}"')
                  for o in ("promoted", "failed", "retried", "dead_lettered", "duplicate")}
        assert counts == {"promoted": 3, "failed": 0, "retried": 0, "dead_lettered": 0, "duplicate": 0}, counts
        assert httpx.get(f"{url}/readyz", timeout=30).status_code == 200
    finally:
        if trainer is not None:
            trainer.stop()
        registry.process.stop()
    print(f"commands sent at {sent_at - started:.1f}s, killed {killed_at - sent_at:.1f}s later; "
          f"A's version at the kill: {at_kill}, after the registry finished: {kept}; "
          f"restart to partition held {reassigned_s:.1f}s, to all outcomes {completed_at - restarted_at:.1f}s "
          f"(kill to restart "
          f"{restarted_at - killed_at:.1f}s); test {time.monotonic() - started:.1f}s; "
          f"versions {[(v['version'], v['params']['command_id'][-1], v['sha256'][:12]) for v in versions]}")
