"""ONNX validation: every refusal reason, and the signature read from the graph."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from registry.domain import Signature, VersionSpec
from registry.errors import InvalidModel, OpsetNotAllowed, SignatureMismatch
from registry.validation import validate_model


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    return path


def _validate(path: Path, spec: VersionSpec, lo: int = 13, hi: int = 21) -> object:
    return validate_model(path, declared=spec.signature, min_opset=lo, max_opset=hi)


def test_valid_model_passes_and_reports_opset_and_signature(tmp_path: Path, make_onnx: Callable[..., bytes],
                                                            make_spec: Callable[..., VersionSpec]) -> None:
    result = validate_model(_write(tmp_path, make_onnx(4, 2, opset=17)), declared=make_spec(4, 2).signature,
                            min_opset=13, max_opset=21)
    assert result.opset == 17
    assert result.signature == make_spec(4, 2).signature


def test_fixed_batch_dimension_is_read_as_its_size(tmp_path: Path, make_onnx: Callable[..., bytes]) -> None:
    spec = VersionSpec.model_validate({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3]}],
                                       "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 1]}]})
    assert validate_model(_write(tmp_path, make_onnx(batch=1)), declared=spec.signature, min_opset=13,
                          max_opset=21).signature == spec.signature


@pytest.mark.parametrize("data", [b"", b"not a model at all", b"\x08\x07\x12\x04junk" * 10, bytes(range(256)) * 4])
def test_garbage_is_refused(tmp_path: Path, data: bytes, make_spec: Callable[..., VersionSpec]) -> None:
    with pytest.raises(InvalidModel, match="not an ONNX model"):
        _validate(_write(tmp_path, data), make_spec())


def test_truncated_model_is_refused(tmp_path: Path, make_onnx: Callable[..., bytes],
                                    make_spec: Callable[..., VersionSpec]) -> None:
    data = make_onnx()
    with pytest.raises(InvalidModel):
        _validate(_write(tmp_path, data[: len(data) // 2]), make_spec())


def test_checker_failure_is_refused(tmp_path: Path, make_spec: Callable[..., VersionSpec]) -> None:
    # MatMul of [N,3] by [4,1]: structurally a graph, but full shape inference fails.
    w = numpy_helper.from_array(np.zeros((4, 1), dtype=np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "bad",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with pytest.raises(InvalidModel, match=r"onnx\.checker refused"):
        _validate(_write(tmp_path, model.SerializeToString()), make_spec())


def test_unknown_operator_is_refused(tmp_path: Path, make_spec: Callable[..., VersionSpec]) -> None:
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "bad",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with pytest.raises(InvalidModel):
        _validate(_write(tmp_path, model.SerializeToString()), make_spec())


@pytest.mark.parametrize("opset", [11, 12, 22])
def test_opset_outside_range_is_refused(tmp_path: Path, opset: int, make_onnx: Callable[..., bytes],
                                        make_spec: Callable[..., VersionSpec]) -> None:
    with pytest.raises(OpsetNotAllowed, match=f"opset {opset} is outside the allowed range 13..21"):
        _validate(_write(tmp_path, make_onnx(opset=opset)), make_spec())


def test_custom_operator_domain_is_refused(tmp_path: Path, make_onnx: Callable[..., bytes],
                                           make_spec: Callable[..., VersionSpec]) -> None:
    model = onnx.load_from_string(make_onnx())
    model.opset_import.append(helper.make_opsetid("com.evil", 1))
    with pytest.raises(OpsetNotAllowed, match=r"com\.evil"):
        _validate(_write(tmp_path, model.SerializeToString()), make_spec())


def test_external_data_is_refused(tmp_path: Path, make_onnx: Callable[..., bytes],
                                  make_spec: Callable[..., VersionSpec]) -> None:
    model = onnx.load_from_string(make_onnx())
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "../../../../etc/passwd"
    with pytest.raises(InvalidModel, match="external file"):
        _validate(_write(tmp_path, model.SerializeToString()), make_spec())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 3]}]}, "inputs declared"),
        ({"inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, 3]}]}, "declared FP64"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}, r"declared FP32 \[-1, 4\]"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [8, 3]}]}, r"\[8, 3\]"),
        ({"outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]}, "output 'y'"),
        ({"outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]},
                      {"name": "z", "datatype": "FP32", "shape": [-1, 1]}]}, "outputs declared"),
    ],
)
def test_signature_mismatch_is_refused_with_the_difference(
    tmp_path: Path, change: dict[str, object], message: str, make_onnx: Callable[..., bytes],
    make_spec: Callable[..., VersionSpec],
) -> None:
    spec = VersionSpec.model_validate({**make_spec().model_dump(), **change})
    with pytest.raises(SignatureMismatch, match=message):
        _validate(_write(tmp_path, make_onnx()), spec)


def test_model_that_fails_at_run_time_is_refused(tmp_path: Path, make_spec: Callable[..., VersionSpec]) -> None:
    # Reshape to a shape of the wrong size passes the checker (the target is a runtime input) but
    # cannot run: onnxruntime's dummy batch catches it.
    shape = numpy_helper.from_array(np.array([-1, 7], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("ReduceSum", ["r"], ["y"], keepdims=1,
                                                                                 axes=None)],
        "bad_reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
        initializer=[shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    spec = VersionSpec.model_validate({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
                                       "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 1]}]})
    with pytest.raises(InvalidModel, match="onnxruntime could not run"):
        _validate(_write(tmp_path, model.SerializeToString()), spec)


def test_non_tensor_output_is_refused(tmp_path: Path, make_spec: Callable[..., VersionSpec]) -> None:
    graph = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["x"], ["y"])], "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_sequence_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with pytest.raises(InvalidModel, match="not a tensor"):
        _validate(_write(tmp_path, model.SerializeToString()), make_spec())


def test_signature_needs_inputs_and_outputs() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Signature(inputs=[], outputs=[])
