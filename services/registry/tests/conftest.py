"""Shared fixtures of the registry tests: ONNX models built with onnx.helper, databases, the core,
and a recording stand-in for Triton's model control endpoints."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from registry.db import SqlModelStore, make_engine
from registry.domain import Principal, Role, VersionSpec
from registry.migrations import upgrade_to_head
from registry.service import EventTopics, Limits, RegistryService
from registry.storage import LocalArtifactStore
from registry.triton_repo import TritonRepository

OPSET = 17


def linear_onnx(
    n_in: int = 3,
    n_out: int = 1,
    *,
    opset: int = OPSET,
    input_name: str = "x",
    output_name: str = "y",
    batch: int | str = "batch",
    seed: int = 0,
) -> bytes:
    """A tiny linear model ``y = x @ W + b`` as ONNX bytes (``batch`` is the first dim)."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(size=(n_in, n_out)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.normal(size=(n_out,)).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", [input_name, "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], [output_name])],
        "linear",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, n_in])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, n_out])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def linear_spec(n_in: int = 3, n_out: int = 1, *, input_name: str = "x", output_name: str = "y",
                **extra: Any) -> VersionSpec:
    """The matching declaration of :func:`linear_onnx`, with lineage."""
    body: dict[str, Any] = {
        "inputs": [{"name": input_name, "datatype": "FP32", "shape": [-1, n_in]}],
        "outputs": [{"name": output_name, "datatype": "FP32", "shape": [-1, n_out]}],
        "metrics": {"auc": 0.91, "logloss": 0.2},
        "params": {"lr": 0.01, "epochs": 5, "optimizer": "adam"},
        "dataset": "fraud",
        "training_window": {
            "start_time": "2026-01-01T00:00:00Z",
            "end_time": "2026-01-02T00:00:00Z",
            "offsets": [{"topic": "ingest.feature-event.v1", "partition": 0, "start_offset": 0, "end_offset": 100}],
        },
        "reference_stats": {"f0": {"mean": 0.1, "std": 1.0, "histogram": [1, 2, 3]}},
        "code_version": "abc1234",
    }
    body.update(extra)
    return VersionSpec.model_validate(body)


@pytest.fixture
def make_onnx() -> Callable[..., bytes]:
    """:func:`linear_onnx`."""
    return linear_onnx


@pytest.fixture
def make_spec() -> Callable[..., VersionSpec]:
    """:func:`linear_spec`."""
    return linear_spec


@pytest.fixture
def spec_json() -> Callable[..., str]:
    """The metadata part of an upload, as JSON text."""

    def build(**kwargs: Any) -> str:
        return json.dumps(linear_spec(**kwargs).model_dump(mode="json"))

    return build


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty registry database: a SQLite file, or a new database on the real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    url: str = request.getfixturevalue("postgres_database")()
    return url


@pytest.fixture
def store(database_url: str) -> Iterator[SqlModelStore]:
    """A migrated store on :func:`database_url`."""
    upgrade_to_head(database_url)
    engine = make_engine(database_url)
    yield SqlModelStore(engine)
    engine.dispose()


@pytest.fixture
def artifacts(tmp_path: Path) -> LocalArtifactStore:
    """An empty artifact store."""
    return LocalArtifactStore(tmp_path / "artifacts")


@pytest.fixture
def triton_repo(tmp_path: Path) -> TritonRepository:
    """An empty Triton model repository."""
    return TritonRepository(tmp_path / "triton", max_batch_size=16, max_queue_delay_us=500)


@pytest.fixture
def service(store: SqlModelStore, artifacts: LocalArtifactStore, triton_repo: TritonRepository) -> RegistryService:
    """The core over the real store, with a 1 MiB upload limit and opsets 13..21."""
    return RegistryService(
        store=store,
        artifacts=artifacts,
        limits=Limits(max_artifact_bytes=1024 * 1024, min_opset=13, max_opset=21),
        topics=EventTopics(model_registered="registry.model-registered.v1",
                           rollout_changed="registry.rollout-changed.v1"),
        triton_repo=triton_repo,
    )


@pytest.fixture
def trainer() -> Principal:
    """A principal with the trainer role."""
    return Principal(name="trainer-ci", roles=frozenset({Role.TRAINER}))


@pytest.fixture
def operator() -> Principal:
    """A principal with the operator role."""
    return Principal(name="alice", roles=frozenset({Role.OPERATOR}))


class FakeTritonControl(ThreadingHTTPServer):
    """A loopback HTTP server standing in for Triton's ``/v2/repository/models/{name}/load|unload``.

    It records every call as ``(path, JSON body)`` in ``calls`` and answers ``status``: 200 with
    ``{}``, or that status with Triton's error shape. A fake, because these tests check what the
    registry asks of Triton and how it reacts to a refusal; the real Triton is exercised by the
    inference and reliability suites.
    """

    calls: list[tuple[str, dict[str, Any]]]
    status: int
    error: str
    """The error message a refused call answers with."""
    index: list[dict[str, str]]
    """What ``POST /v2/repository/index`` answers (always 200): Triton's ``{name, version, state, reason}``."""

    @property
    def url(self) -> str:
        """Base URL of the server (``http://127.0.0.1:<port>``)."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def paths(self) -> list[str]:
        """The paths of the recorded calls, in order."""
        return [path for path, _ in self.calls]


class _ControlHandler(BaseHTTPRequestHandler):
    server: FakeTritonControl

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.calls.append((self.path, json.loads(body or b"{}")))
        status = self.server.status
        if self.path == "/v2/repository/index":
            payload, status = json.dumps(self.server.index).encode(), 200
        elif status == 200:
            payload = b"{}"
        else:
            payload = json.dumps({"error": self.server.error}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def fake_triton() -> Iterator[FakeTritonControl]:
    """A :class:`FakeTritonControl` on a free loopback port, answering 200 until told otherwise."""
    server = FakeTritonControl(("127.0.0.1", 0), _ControlHandler)
    server.calls, server.status, server.error, server.index = [], 200, "failed to load 'm'", []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()
