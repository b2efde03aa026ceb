"""Fixtures of the reliability suite beyond the session's services (``tests/fixtures/``)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.localstack import REPO, free_port, http_ok
from tests.fixtures.triton import TritonServer
from tests.reliability.processes import wait_for


@pytest.fixture
def fault_proxy(private_triton: TritonServer, tmp_path: Path) -> Iterator[str]:
    """``fault_proxy.py`` in front of the private Triton's HTTP endpoint; its base URL."""
    port = free_port()
    log = (tmp_path / "fault-proxy.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "tests.reliability.fault_proxy", "--port", str(port),
                                "--upstream", private_triton.http_url], cwd=REPO, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: process.poll() is not None or http_ok(f"{url}/__fault") or None,
                 "the fault proxy did not answer", timeout_s=30)
        if process.poll() is not None:
            pytest.fail(f"the fault proxy exited with {process.returncode}: "
                        f"{(tmp_path / 'fault-proxy.log').read_text(errors='replace')}", pytrace=False)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
