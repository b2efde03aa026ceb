"""README's first command, minus the install: the stack comes up, streams, and stops cleanly, twice."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.localstack import REPO, free_port

pytestmark = pytest.mark.integration


def run_stack(state: Path, kafka_port: int, controller_port: int, ingest_port: int) -> str:
    env = {**os.environ, "TRIBUTARY_STATE": str(state), "KAFKA_CONTROLLER_PORT": str(controller_port)}
    done = subprocess.run(
        [sys.executable, "-m", "deploy.stack", "--duration", "8", "--rate", "20",
         "--kafka-port", str(kafka_port), "--ingest-port", str(ingest_port)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    return done.stdout


def test_stack_runs_streams_and_stops_cleanly_and_reuses_its_data(tmp_path: Path) -> None:
    ports = (free_port(), free_port(), free_port())
    first = run_stack(tmp_path, *ports)
    assert "dataset 'credit' registered (revision 1)" in first
    total = re.search(r"total: events accepted (\d+), dead-lettered (\d+), failed (\d+)", first)
    assert total is not None, first
    accepted, _, failed = map(int, total.groups())
    assert accepted > 0 and failed == 0
    assert "stopped" in first
    assert not (tmp_path / "kafka" / "broker.pid").exists()

    # The broker's data is durable: the second run finds the spec it registered the first time.
    second = run_stack(tmp_path, *ports)
    assert "dataset 'credit' already registered, kept from the last run (revision 1)" in second
    assert (tmp_path / "kafka" / "metadata" / "meta.properties").exists()
