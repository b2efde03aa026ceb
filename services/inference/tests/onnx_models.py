"""Models for the gateway's tests: tiny ONNX graphs in the registry's Triton repository layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

WEIGHTS = {
    1: ([0.1, 0.2, 0.3, 0.4], 0.0),
    2: ([0.1, 0.2, 0.3, 0.41], 0.0),  # a close relative of v1: tiny divergence
    4: ([-0.4, -0.3, -0.2, -0.1], 1.0),  # a very different model: large divergence
}
FAILING = 3  # a version whose graph fails at run time for every input


def logistic_onnx(weights: list[float], bias: float) -> bytes:
    """y = sigmoid(x @ w + b) for x of shape [batch, 4]."""
    w = numpy_helper.from_array(np.array(weights, dtype=np.float32).reshape(4, 1), "W")
    b = numpy_helper.from_array(np.array([bias], dtype=np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "B"], ["z"]),
         helper.make_node("Sigmoid", ["z"], ["y"])],
        "logistic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def failing_onnx() -> bytes:
    """Same signature, but reshapes [batch, 4] to [-1, 3]: fails at run time for any batch of one."""
    shape = numpy_helper.from_array(np.array([-1, 3], dtype=np.int64), "S")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "S"], ["r"]), helper.make_node("ReduceSum", ["r"], ["y"], keepdims=1)],
        "failing",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def reference(version: int, x: np.ndarray) -> np.ndarray:
    """What a version answers, computed with numpy."""
    w, b = WEIGHTS[version]
    z = x.astype(np.float64) @ np.array(w).reshape(4, 1) + b
    return 1 / (1 + np.exp(-z))


CONFIG = '''name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 64
version_policy: {{ specific: {{ versions: [{versions}] }} }}
input [
  {{
    name: "x"
    data_type: TYPE_FP32
    dims: [4]
  }}
]
output [
  {{
    name: "y"
    data_type: TYPE_FP32
    dims: [1]
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: 100
}}
'''


def write_registry_model(repo: Path, name: str, versions: dict[int, bytes]) -> None:
    """``<repo>/<name>/<version>/model.onnx`` and ``config.pbtxt``, as the registry writes them."""
    for version, data in versions.items():
        (repo / name / str(version)).mkdir(parents=True, exist_ok=True)
        (repo / name / str(version) / "model.onnx").write_bytes(data)
    (repo / name / "config.pbtxt").write_text(
        CONFIG.format(name=name, versions=", ".join(str(v) for v in sorted(versions))))


def all_versions() -> dict[int, bytes]:
    """Every test version of the ``credit`` model."""
    out = {v: logistic_onnx(*wb) for v, wb in WEIGHTS.items()}
    out[FAILING] = failing_onnx()
    return out
