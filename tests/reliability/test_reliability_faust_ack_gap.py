"""K5: faust's ack-gap commit (faust-streaming #606) cannot lose a record the way drift runs faust.

With agent concurrency above 1, a slow record at the head of a partition while later ones are
acknowledged let faust commit past it; after ``kill -9`` it was never processed. Drift declares
its agents with the default concurrency, and this test holds that, with drift's own app and
faust settings, on the pinned faust version (reliability plan K5):

- a ``slow`` record (20 s) followed by 20 fast ones on one partition; ``kill -9`` of the worker
  10 s after the slow record started;
- the group's committed offset at the kill is at most the slow record's offset;
- after a restart the slow record and all 20 fast ones are processed: nothing lost.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from deploy.localstack import REPO, free_port
from tests.reliability.processes import committed_offset, wait_for

pytestmark = pytest.mark.integration

SLOW_S = 20.0


def _start(env: dict[str, str], work: Path) -> subprocess.Popen[bytes]:
    (work / "ready").unlink(missing_ok=True)
    with (work / "worker.log").open("ab") as log:
        worker = subprocess.Popen([sys.executable, "-m", "tests.reliability.faust_ack_gap_worker"], env=env,
                                  cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: (work / "ready").exists() or None, lambda: f"the worker to start:\n{_tail(work)}", 120)
    return worker


def _tail(work: Path) -> str:
    return "\n".join((work / "worker.log").read_text(errors="replace").splitlines()[-30:])


def test_a_killed_worker_never_commits_past_a_record_in_flight(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic, app_id = f"reliability.k5.{uuid.uuid4().hex[:8]}", f"drift-k5-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    log = tmp_path / "handled.log"
    env = {**os.environ, "DRIFT_KAFKA_BOOTSTRAP": kafka_bootstrap, "DRIFT_APP_ID": app_id,
           "DRIFT_STATE_DIR": str(tmp_path / "state"), "DRIFT_REGISTRY_URL": f"http://127.0.0.1:{free_port()}",
           "K5_TOPIC": topic, "K5_LOG": str(log), "K5_SLOW_S": str(SLOW_S)}
    worker = _start(env, tmp_path)
    try:
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all"})
        for value in [b"fast"] * 3 + [b"slow"] + [b"fast"] * 20:
            producer.produce(topic, value, partition=0)
        assert producer.flush(30) == 0
        slow_offset = 3

        wait_for(lambda: f"started {slow_offset}" in log.read_text() if log.exists() else None,
                 lambda: f"the slow record to start:\n{_tail(tmp_path)}", 120)
        time.sleep(SLOW_S / 2)
        committed = committed_offset(kafka_bootstrap, app_id, topic)
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)
        # Commits did happen (the fast records before it), and none went past the record in flight.
        assert 0 < committed <= slow_offset, f"committed offset {committed}; the record in flight is {slow_offset}"
        assert f"done {slow_offset}" not in log.read_text()

        worker = _start(env, tmp_path)
        expected = {f"done {o}" for o in range(24)}
        wait_for(lambda: expected <= set(log.read_text().splitlines()) or None,
                 lambda: f"every record handled after the restart; missing "
                         f"{sorted(expected - set(log.read_text().splitlines()))}:\n{_tail(tmp_path)}", 180)
    finally:
        worker.kill()
        worker.wait(30)
