"""The Triton model repository on disk, and the model control client.

The control client is tested against the recording stand-in for Triton's
``/v2/repository/models/{name}/load|unload`` endpoints (``fake_triton`` in the registry tests'
conftest), so the tests see exactly what the client sends and how it reads a refusal.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from registry.domain import Signature
from registry.errors import InvalidName, TritonError
from registry.triton_repo import TritonControl, TritonRepository, render_config
from schemas.registry import TensorSpec

from services.registry.tests.conftest import FakeTritonControl


def _sig(*, batch: bool = True) -> Signature:
    b = [-1] if batch else [4]
    return Signature(
        inputs=[TensorSpec(name="dense", datatype="FP32", shape=[*b, 8]),
                TensorSpec(name="ids", datatype="INT64", shape=[*b, -1]),
                TensorSpec(name="text", datatype="BYTES", shape=[*b, 1])],
        outputs=[TensorSpec(name="score", datatype="FP32", shape=[*b, 1])],
    )


def test_version_layout_is_what_triton_loads(tmp_path: Path) -> None:
    repo = TritonRepository(tmp_path / "repo")
    path = repo.write_version("fraud", 3, io.BytesIO(b"onnx bytes"))
    assert path == tmp_path / "repo" / "fraud" / "3" / "model.onnx"
    assert path.read_bytes() == b"onnx bytes"
    assert repo.has_version("fraud", 3) and not repo.has_version("fraud", 2)
    config = repo.write_config("fraud", _sig(), versions=[3])
    assert config == tmp_path / "repo" / "fraud" / "config.pbtxt"
    leftovers = [p.name for p in (tmp_path / "repo" / "fraud").rglob(".*")]
    assert leftovers == []  # temporary files were renamed into place


def test_config_of_a_batchable_model() -> None:
    text = render_config("fraud", _sig(), versions=[3, 1, 3], max_batch_size=32, max_queue_delay_us=250)
    assert text == "\n".join([
        'name: "fraud"',
        'platform: "onnxruntime_onnx"',
        "max_batch_size: 32",
        "version_policy: { specific: { versions: [1, 3] } }",
        "input [",
        "  {", '    name: "dense"', "    data_type: TYPE_FP32", "    dims: [8]", "  },",
        "  {", '    name: "ids"', "    data_type: TYPE_INT64", "    dims: [-1]", "  },",
        "  {", '    name: "text"', "    data_type: TYPE_STRING", "    dims: [1]", "  }",
        "]",
        "output [",
        "  {", '    name: "score"', "    data_type: TYPE_FP32", "    dims: [1]", "  }",
        "]",
        "dynamic_batching {",
        "  max_queue_delay_microseconds: 250",
        "}",
        "",
    ])


def test_config_of_a_fixed_shape_model_has_no_batching() -> None:
    text = render_config("m", _sig(batch=False), versions=[1], max_batch_size=32, max_queue_delay_us=250)
    assert "max_batch_size: 0" in text
    assert "dims: [4, 8]" in text
    assert "dynamic_batching" not in text


def test_batching_can_be_switched_off() -> None:
    text = render_config("m", _sig(), versions=[1], max_batch_size=0, max_queue_delay_us=250)
    assert "max_batch_size: 0" in text and "dims: [-1, 8]" in text and "dynamic_batching" not in text


def test_tensor_names_are_escaped() -> None:
    sig = Signature(inputs=[TensorSpec(name='a"b\\c', datatype="FP32", shape=[-1, 1])],
                    outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 1])])
    assert 'name: "a\\"b\\\\c"' in render_config("m", sig, versions=[1], max_batch_size=1, max_queue_delay_us=0)


@pytest.mark.parametrize("name", ["../evil", "/abs", "a/b", "..", ".", "", "x" * 129, "UPPER", "a%2Fb", "a\x00b"])
def test_repository_refuses_path_tricks(tmp_path: Path, name: str) -> None:
    repo = TritonRepository(tmp_path / "repo")
    with pytest.raises(InvalidName):
        repo.write_version(name, 1, io.BytesIO(b"x"))
    with pytest.raises(InvalidName):
        repo.write_config(name, _sig(), versions=[1])
    assert list((tmp_path / "repo").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_version_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(InvalidName):
        TritonRepository(tmp_path).version_file("m", 0)


def test_control_client_loads_and_unloads(fake_triton: FakeTritonControl) -> None:
    control = TritonControl(f"{fake_triton.url}/")
    try:
        control.load("fraud")
        control.unload("fraud")
    finally:
        control.close()
    assert fake_triton.calls == [
        ("/v2/repository/models/fraud/load", {}),
        ("/v2/repository/models/fraud/unload", {"parameters": {"unload_dependents": False}}),
    ]


def test_control_client_reports_triton_refusal(fake_triton: FakeTritonControl) -> None:
    fake_triton.status = 400
    control = TritonControl(fake_triton.url)
    try:
        with pytest.raises(TritonError, match=r"HTTP 400.*failed to load"):
            control.load("m")
    finally:
        control.close()


def test_control_client_reports_unreachable_triton() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    control = TritonControl(f"http://127.0.0.1:{port}", timeout_s=2)
    try:
        with pytest.raises(TritonError, match="could not be reached"):
            control.load("m")
    finally:
        control.close()


def test_control_client_refuses_bad_names_before_calling(fake_triton: FakeTritonControl) -> None:
    control = TritonControl(fake_triton.url)
    try:
        with pytest.raises(InvalidName):
            control.load("../../v2/health")
    finally:
        control.close()
    assert fake_triton.calls == []
