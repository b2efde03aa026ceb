"""The inference gateway while Redis dies and comes back empty (plan G6).

Pass criteria: every request succeeds on the approved champion while Redis is down and after
it returns without its data (last-known-good routing, never an unapproved version); readiness
stays 200 and says it is serving the last known routes; the routing state is back in Redis
within 10 s of its return. Triton down (fallback or clean 503) is covered in the gateway's own
suite (see README.md).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deploy.localstack import ServiceProcess, free_port
from services.inference.tests.integration.conftest import MODEL, make_topics, v2_body
from services.inference.tests.onnx_models import all_versions, write_registry_model
from tests.fixtures.triton import TritonServer, add_model
from tests.reliability.processes import wait_for

pytestmark = pytest.mark.integration
ROW = [[1.0, 2.0, 3.0, 4.0]]


class RedisServer:
    """A redis-server of the test's own (no persistence: a restart comes back empty, like FLUSHALL)."""

    def __init__(self, root: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server not found; run deploy/install.sh", pytrace=False)
        self.binary, self.root, self.port = binary, root, free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                                         str(self.root), "--save", "", "--appendonly", "no"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.cli("PING") == "PONG", "redis to answer", 30)

    def kill9(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def cli(self, *args: str) -> str:
        done = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=10)
        return done.stdout.strip()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.kill9()


def test_redis_killed_and_back_empty_keeps_serving_the_last_known_routes(
        redis_server: RedisServer, triton: TritonServer, kafka_bootstrap: str, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_registry_model(repo, MODEL, all_versions())
    add_model(triton, repo, MODEL)
    rollout_topic = f"test.rollout.{uuid.uuid4().hex[:8]}"
    make_topics(kafka_bootstrap, rollout_topic)
    port = free_port()
    prefix = f"rel-{uuid.uuid4().hex[:8]}:"
    env = {"INFERENCE_TRITON_GRPC_URL": triton.grpc_url, "INFERENCE_REDIS_URL": redis_server.url,
           "INFERENCE_KAFKA_BOOTSTRAP": kafka_bootstrap, "INFERENCE_PORT": str(port),
           "INFERENCE_GRPC_PORT": str(free_port()), "INFERENCE_REDIS_PREFIX": prefix,
           "INFERENCE_ROLLOUT_TOPIC": rollout_topic, "INFERENCE_CANARY_ANALYSIS": "false",
           "INFERENCE_ROLLOUT_REFRESH_S": "0.1", "INFERENCE_CONSUME_FEATURES": "false",
           "INFERENCE_JOIN_LABELS": "false", "INFERENCE_CONSUME_REQUESTS": "false", "INFERENCE_LOG_JSON": "false",
           "INFERENCE_MODEL_REPOSITORY": str(repo), "INFERENCE_BACKEND_TIMEOUT_S": "1"}
    url = f"http://127.0.0.1:{port}"
    gateway = ServiceProcess("inference", "inference", env, ready_url=f"{url}/readyz",
                             log_path=tmp_path / "inference.log")
    gateway.start()
    statuses: Counter[int] = Counter()
    versions: Counter[str] = Counter()
    errors: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                r = client.post(f"{url}/v2/models/{MODEL}/infer", json=v2_body(ROW))
                statuses[r.status_code] += 1
                if r.status_code == 200:
                    versions[str(r.json()["model_version"])] += 1
                else:
                    errors.append(r.text[:200])

    thread = threading.Thread(target=load, daemon=True)
    try:
        r = httpx.put(f"{url}/v1/rollout/{MODEL}", json={"alias": "champion", "version": 1, "reason": "test"},
                      timeout=10)
        assert r.status_code == 200, r.text
        thread.start()
        wait_for(lambda: statuses[200] >= 50, "50 answers before the fault", 30)

        redis_server.kill9()
        down = statuses.total()
        wait_for(lambda: statuses.total() >= down + 200, "200 requests while Redis is down", 60)
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 200 and "Redis" in ready.json()["reason"], ready.text

        redis_server.start()                       # back, and empty
        back = time.monotonic()
        wait_for(lambda: redis_server.cli("HGET", f"{prefix}rollout:{MODEL}", "champion") == "1",
                 "the routing state back in Redis", 10)
        reconverged = time.monotonic() - back
        after = statuses.total()
        wait_for(lambda: statuses.total() >= after + 200, "200 requests after Redis returned", 60)
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["reason"] == "ready", ready.text
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(30)
        gateway.stop()
    print(f"statuses={dict(statuses)} versions={dict(versions)} reconverged in {reconverged:.1f}s")
    assert set(statuses) == {200}, (statuses, errors[:3])
    assert set(versions) == {"1"}
