"""The gateway against real Triton, Redis and Kafka: the models, the servers, a running gateway."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from inference.app import create_app
from inference.early_refusal import early_refusal_protocol
from inference.settings import Settings

from deploy.localstack import REPO, ServiceProcess, free_port
from services.inference.tests.onnx_models import FAILING, all_versions, write_registry_model
from tests.fixtures.triton import TritonServer, add_model

T = TypeVar("T")
MODEL = "credit"


@pytest.fixture(scope="session")
def registry_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The registry-layout repository holding every test version of ``credit``."""
    repo = tmp_path_factory.mktemp("registry-repo")
    write_registry_model(repo, MODEL, all_versions())
    return repo


@pytest.fixture(scope="session")
def served(triton: TritonServer, registry_repo: Path) -> TritonServer:
    """The session Triton serving ``credit`` (every version) through the local Python-backend adapter."""
    add_model(triton, registry_repo, MODEL)
    return triton


def make_topics(bootstrap: str, *names: str) -> None:
    """Create ``names`` (and their ``.dlq``) with 3 partitions; wait until they exist."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    wanted = [*names, *(f"{n}.dlq" for n in names)]
    futures = admin.create_topics([NewTopic(n, num_partitions=3, replication_factor=1) for n in wanted])
    for future in futures.values():
        future.result(30)
    deadline = time.monotonic() + 30
    while not set(wanted) <= set(admin.list_topics(timeout=10).topics):
        assert time.monotonic() < deadline, f"topics {wanted} did not appear"
        time.sleep(0.1)


class Gateway:
    """A gateway served by uvicorn on free ports in a thread of its own (a real HTTP and gRPC server)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self.server = uvicorn.Server(uvicorn.Config(
            self.app, host="127.0.0.1", port=settings.port, log_config=None, access_log=False, lifespan="on",
            http=early_refusal_protocol(self.app.state, settings.retry_after_s)))  # as python -m inference
        self.thread = threading.Thread(target=self._serve, name="gateway", daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.settings.grpc_port}"

    def _serve(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())

    def start(self, timeout_s: float = 60) -> Gateway:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive():
                pytest.fail("the gateway stopped during start-up (see the log above)", pytrace=False)
            assert time.monotonic() < deadline, "the gateway did not start in time"
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 120) -> T:
        """Run ``coro`` on the gateway's event loop (to call the core in-process)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    @property
    def service(self) -> Any:
        return self.app.state.service

    def wait_for(self, what: Callable[[], bool], timeout_s: float = 30, message: str = "") -> None:
        deadline = time.monotonic() + timeout_s
        while not what():
            assert time.monotonic() < deadline, message or "condition not met in time"
            time.sleep(0.05)


@pytest.fixture
def topics(kafka_bootstrap: str) -> dict[str, str]:
    """Per-test rollout, request, response and decision topics (the rollout topic is replayed whole)."""
    suffix = uuid.uuid4().hex[:8]
    names = {k: f"test.{k}.{suffix}" for k in ("rollout", "requests", "responses", "decisions")}
    make_topics(kafka_bootstrap, *names.values())
    return names


@pytest.fixture
def settings_for(kafka_bootstrap: str, redis_url: str, topics: dict[str, str], registry_repo: Path
                 ) -> Callable[..., Settings]:
    """Settings of a test gateway: its own Redis prefix, consumer groups and topics."""
    unique = uuid.uuid4().hex[:8]

    def make(triton: TritonServer, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "triton_grpc_url": triton.grpc_url, "triton_http_url": triton.http_url, "redis_url": redis_url,
            "kafka_bootstrap": kafka_bootstrap,
            "redis_prefix": f"test-{unique}:", "group_suffix": f"-{unique}", "port": free_port(),
            "grpc_port": free_port(), "rollout_topic": topics["rollout"], "request_topic": topics["requests"],
            "response_topic": topics["responses"], "canary_decisions_topic": topics["decisions"],
            "model_repository": registry_repo, "log_json": False, "canary_analysis": False,
            "rollout_refresh_s": 0.05,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def gateway_factory() -> Iterator[Callable[[Settings], Gateway]]:
    """Starts gateways (stopped at the end of the test)."""
    started: list[Gateway] = []

    def make(settings: Settings) -> Gateway:
        g = Gateway(settings).start()
        started.append(g)
        return g

    yield make
    for g in reversed(started):
        g.stop()


@pytest.fixture
def gateway(served: TritonServer, settings_for: Callable[..., Settings],
            gateway_factory: Callable[[Settings], Gateway]) -> Gateway:
    """A gateway in front of the session Triton, ``credit`` v1 as champion."""
    g = gateway_factory(settings_for(served))
    set_rollout(g, "champion", 1)
    return g


def set_rollout(g: Gateway, alias: str, version: int | None, weight: float | None = None) -> dict[str, Any]:
    """Change the rollout through the operator API and wait until this replica serves it."""
    body: dict[str, Any] = {"alias": alias, "version": version, "reason": "test"}
    if weight is not None:
        body["weight"] = weight
    response = httpx.put(f"{g.url}/v1/rollout/{MODEL}", json=body, timeout=10)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def v2_body(rows: list[list[float]], **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [len(rows), 4],
                        "data": [v for r in rows for v in r]}], **extra}


GATEWAY_PRINCIPAL = "gateway-under-test"
"""Name of the registry token the test gateways change aliases with (the registry records it as author)."""


@dataclass
class Registry:
    """A real registry process (``python -m registry``) on its own SQLite file, publishing to the test's topic."""

    process: ServiceProcess
    url: str
    operator_token: str
    gateway_token: str

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request to the registry with the operator's token."""
        return httpx.request(method, f"{self.url}{path}", headers={"Authorization": f"Bearer {self.operator_token}"},
                             timeout=30, **kwargs)

    def set_alias(self, alias: str, version: int, weight: float | None = None) -> None:
        """Point an alias of ``credit`` at ``version`` as an operator would."""
        body: dict[str, Any] = {"version": version, "reason": "test"}
        if weight is not None:
            body["weight"] = weight
        r = self.call("PUT", f"/v1/models/{MODEL}/aliases/{alias}", json=body)
        assert r.status_code == 200, r.text

    def aliases(self) -> dict[str, Any]:
        """Where every alias of ``credit`` points in the registry."""
        r = httpx.get(f"{self.url}/v1/models/{MODEL}", timeout=30)
        assert r.status_code == 200, r.text
        aliases: dict[str, Any] = r.json()["aliases"]
        return aliases

    def history(self, alias: str) -> list[dict[str, Any]]:
        """The registry's audit log of one alias, oldest first."""
        r = httpx.get(f"{self.url}/v1/models/{MODEL}/history", params={"alias": alias}, timeout=30)
        assert r.status_code == 200, r.text
        data: list[dict[str, Any]] = r.json()["data"]
        return data


@pytest.fixture
def registry(kafka_bootstrap: str, topics: dict[str, str], tmp_path: Path) -> Iterator[Registry]:
    """A registry holding ``credit`` v1-v4 (the same graphs Triton serves), publishing to the test's rollout topic."""
    data_dir = tmp_path / "registry"
    data_dir.mkdir()
    env = {"REGISTRY_DATA_DIR": str(data_dir)}
    cli = str(Path(sys.executable).parent / "tributary-registry-cli")

    def run(*args: str) -> str:
        done = subprocess.run([cli, *args], env={**os.environ, **env}, capture_output=True, text=True,
                              timeout=120, cwd=REPO)
        assert done.returncode == 0, f"tributary-registry-cli {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout.strip().splitlines()[-1]

    run("migrate")
    tokens = {name: run("tokens", "create", "--name", name, "--role", role)
              for name, role in (("trainer", "trainer"), ("operator", "operator"), (GATEWAY_PRINCIPAL, "operator"))}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = ServiceProcess("registry", "registry", {
        **env, "REGISTRY_PORT": str(port), "REGISTRY_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "REGISTRY_ROLLOUT_CHANGED_TOPIC": topics["rollout"],
        "REGISTRY_MODEL_REGISTERED_TOPIC": f"{topics['rollout']}.registered", "REGISTRY_OUTBOX_POLL_INTERVAL_S": "0.2",
        "REGISTRY_LOG_LEVEL": "WARNING"}, ready_url=f"{url}/readyz", log_path=tmp_path / "registry.log")
    process.start()
    spec = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}]}
    trainer = {"Authorization": f"Bearer {tokens['trainer']}"}
    try:
        # The registry runs each graph before accepting it, which the run-time-failing v3 would not
        # survive; it gets a working graph of the same signature there. Triton serves the test
        # repository (where v3 fails), so only the registry's alias records matter here.
        graphs = {**all_versions(), FAILING: all_versions()[1]}
        for version, graph in sorted(graphs.items()):
            r = httpx.post(f"{url}/v1/models/{MODEL}/versions", headers=trainer,
                           files={"metadata": (None, json.dumps(spec), "application/json"),
                                  "artifact": ("model.onnx", graph, "application/octet-stream")}, timeout=60)
            assert r.status_code == 201 and r.json()["version"] == version, r.text
        yield Registry(process, url, tokens["operator"], tokens[GATEWAY_PRINCIPAL])
    finally:
        process.stop()
