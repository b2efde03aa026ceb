"""README's first command without the install and the loop: every process comes up, data streams, all stop, twice."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.localstack import REPO, free_port

pytestmark = pytest.mark.integration

NAMES = ("kafka", "ingest", "registry", "trainer", "drift", "inference")


def run_stack(state: Path, ports: dict[str, int], controller_port: int) -> str:
    env = {**os.environ, "TRIBUTARY_STATE": str(state), "KAFKA_CONTROLLER_PORT": str(controller_port)}
    done = subprocess.run(
        [sys.executable, "-m", "deploy.stack", "--duration", "8", "--rate", "20", "--no-loop",
         *(a for name, port in ports.items() for a in (f"--{name}-port", str(port)))],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=290,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.timeout(600)
def test_stack_runs_streams_and_stops_cleanly_and_reuses_its_data(tmp_path: Path) -> None:
    ports = {name: free_port() for name in NAMES}
    controller = free_port()
    first = run_stack(tmp_path, ports, controller)
    assert "dataset 'credit' registered (revision 1)" in first
    for name in ("registry", "ingest", "drift", "trainer", "inference"):
        assert f"starting {name}" in first
    total = re.search(r"total: events accepted (\d+), dead-lettered (\d+), failed (\d+)", first)
    assert total is not None, first
    accepted, _, failed = map(int, total.groups())
    assert accepted > 0 and failed == 0
    assert "stopped: every process of the stack has exited" in first
    assert not (tmp_path / "kafka" / "broker.pid").exists()
    tokens = (tmp_path / "tokens.json").read_text()

    # The state is durable: the second run finds the spec it registered and the registry tokens it made.
    second = run_stack(tmp_path, ports, controller)
    assert "dataset 'credit' already registered, kept from the last run (revision 1)" in second
    assert (tmp_path / "kafka" / "metadata" / "meta.properties").exists()
    assert (tmp_path / "tokens.json").read_text() == tokens
