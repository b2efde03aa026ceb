"""Validation in a limited child process (reliability plan S4): the same verdicts, and limits that hold.

The sandbox must agree with in-process validation on every verdict, and a model that would
exhaust memory or time is refused by the child's limits while the registry keeps serving.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from registry.app import create_app
from registry.domain import Signature, VersionSpec
from registry.errors import InvalidModel, SignatureMismatch
from registry.sandbox import SandboxLimits, _death, validate_in_sandbox
from registry.settings import Settings
from registry.validation import validate_model

LIMITS = SandboxLimits(memory_bytes=1024 * 1024 * 1024, cpu_s=30, timeout_s=60)


def _memory_bomb() -> bytes:
    """A valid model whose test batch allocates 30000 x 30000 floats (3.6 GB) for its output."""
    shape = numpy_helper.from_array(np.array([30000, 30000], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["shape"], ["big"],
                          value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
         helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
         helper.make_node("Mul", ["x", "s"], ["y"])],
        "bomb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        initializer=[shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


BOMB_SIGNATURE = Signature.model_validate({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}],
                                           "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}]})


def _write(tmp_path: Path, data: bytes, name: str = "model.onnx") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_the_sandbox_gives_the_same_verdicts_as_in_process_validation(
        tmp_path: Path, make_onnx: Callable[..., bytes], make_spec: Callable[..., VersionSpec]) -> None:
    good = _write(tmp_path, make_onnx(4, 2))
    declared = make_spec(4, 2).signature
    inside = validate_model(good, declared=declared, min_opset=13, max_opset=21)
    sandboxed = validate_in_sandbox(good, declared=declared, min_opset=13, max_opset=21, limits=LIMITS)
    assert (sandboxed.opset, sandboxed.signature) == (inside.opset, inside.signature)

    for path, declared_here, error in [
        (_write(tmp_path, b"not onnx at all", "garbage.onnx"), declared, InvalidModel),
        (good, make_spec(5, 2).signature, SignatureMismatch),
    ]:
        with pytest.raises(error) as in_process:
            validate_model(path, declared=declared_here, min_opset=13, max_opset=21)
        with pytest.raises(error) as in_child:
            validate_in_sandbox(path, declared=declared_here, min_opset=13, max_opset=21, limits=LIMITS)
        assert type(in_child.value) is type(in_process.value)
        assert str(in_child.value) == str(in_process.value)


def test_a_model_exhausting_memory_is_refused_by_the_limit(tmp_path: Path) -> None:
    bomb = _write(tmp_path, _memory_bomb())
    with pytest.raises(InvalidModel, match=r"(?i)alloc|memory"):
        validate_in_sandbox(bomb, declared=BOMB_SIGNATURE, min_opset=13, max_opset=21, limits=LIMITS)


def test_validation_past_its_deadline_is_stopped(tmp_path: Path, make_onnx: Callable[..., bytes],
                                                 make_spec: Callable[..., VersionSpec]) -> None:
    path = _write(tmp_path, make_onnx(4, 2))
    with pytest.raises(InvalidModel, match="longer than 0 s and was stopped"):
        validate_in_sandbox(path, declared=make_spec(4, 2).signature, min_opset=13, max_opset=21,
                            limits=SandboxLimits(timeout_s=0.05))


@pytest.mark.parametrize(("returncode", "stderr", "fragment"), [
    (-11, "", "onnxruntime or onnx crashed on it"),
    (-24, "", "more than 30 s of CPU"),
    (-9, "", "killed (CPU or memory limit)"),
    (1, "Traceback\nMemoryError", "more than the sandbox's 1024 MiB"),
    (1, "Traceback\nValueError: odd", "exit code 1): ValueError: odd"),
])
def test_every_way_the_child_can_die_is_named(returncode: int, stderr: str, fragment: str) -> None:
    assert fragment in _death(returncode, stderr, LIMITS)


def test_the_registry_refuses_the_bomb_and_keeps_serving(settings: Settings, tokens: dict[str, str]) -> None:
    settings = settings.model_copy(update={"validation_sandbox": True, "validation_memory_mb": 1024})
    metadata = '{"inputs":[{"name":"x","datatype":"FP32","shape":[-1,1]}],' \
               '"outputs":[{"name":"y","datatype":"FP32","shape":[-1,1]}]}'
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/models/bomb/versions", headers={"Authorization": f"Bearer {tokens['trainer']}"},
                               files={"artifact": ("model.onnx", _memory_bomb(), "application/octet-stream")},
                               data={"metadata": metadata})
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "invalid_model"
        assert client.get("/readyz").status_code == 200
        assert client.get("/v1/models").json()["count"] == 0


_PROBE = """
import socket, sys
from registry.sandbox import isolate_network
network = isolate_network() if sys.argv[2] == "isolate" else "shared"
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5).close()
    reached = "reached"
except OSError as exc:
    reached = f"refused: {exc}"
print(network, "|", reached)
"""


def _probe(port: int, mode: str) -> str:
    done = subprocess.run([sys.executable, "-c", _PROBE, str(port), mode], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_validating_child_cannot_reach_the_network(tmp_path: Path, make_onnx: Callable[..., bytes],
                                                       make_spec: Callable[..., VersionSpec]) -> None:
    """S4: the child leaves the registry's network before it touches the model's bytes."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        port = server.getsockname()[1]
        assert _probe(port, "stay") == "shared | reached"            # the listener is reachable from a child
        network, reached = _probe(port, "isolate").split(" | ", 1)
    assert network == "isolated"
    assert reached.startswith("refused"), reached
    good = _write(tmp_path, make_onnx(4, 2))
    result = validate_in_sandbox(good, declared=make_spec(4, 2).signature, min_opset=13, max_opset=21,
                                 limits=LIMITS)
    assert result.network == "isolated"
