"""ONNX validation of an uploaded artifact: the only module that imports onnx and onnxruntime.

A model is accepted only when every check passes, in this order (cheapest first):

1. it parses as an ONNX ``ModelProto`` and keeps every tensor inside the file (external data
   would make onnxruntime open paths named by the uploader);
2. ``onnx.checker.check_model(full_check=True)`` passes (structure and strict shape inference);
3. its default-domain opset is in the allowed range and it uses no custom operator domains;
4. the declared signature (names, datatypes, shapes, in order) equals the graph's;
5. onnxruntime builds a CPU session and runs a batch of zeros through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto
from schemas.registry import TensorSpec

from registry.domain import Signature
from registry.errors import InvalidModel, OpsetNotAllowed, SignatureMismatch

ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
"""Operator set domains a model may import: the standard ones onnxruntime and Triton run."""

MAX_DUMMY_ELEMENTS = 64 * 1024 * 1024
"""Largest input (in elements) of the test batch; bigger fixed shapes are refused, not allocated."""

_DATATYPES: dict[int, str] = {
    TensorProto.BOOL: "BOOL",
    TensorProto.INT8: "INT8",
    TensorProto.INT16: "INT16",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.UINT8: "UINT8",
    TensorProto.FLOAT16: "FP16",
    TensorProto.FLOAT: "FP32",
    TensorProto.DOUBLE: "FP64",
    TensorProto.STRING: "BYTES",
}
_NUMPY: dict[str, Any] = {
    "BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}


@dataclass(frozen=True)
class ValidatedModel:
    """What validation learned from the graph."""

    opset: int
    signature: Signature


def validate_model(
    path: Path,
    *,
    declared: Signature,
    min_opset: int,
    max_opset: int,
    dummy_batch: int = 2,
) -> ValidatedModel:
    """Check the ONNX model at ``path`` against the rules above and the ``declared`` signature.

    Returns:
        The opset and the graph's signature (equal to ``declared``).

    Raises:
        InvalidModel: the file is not a valid, self-contained, runnable ONNX model.
        OpsetNotAllowed: its opset is outside ``[min_opset, max_opset]`` or it imports a
            custom operator domain.
        SignatureMismatch: the declared signature differs from the graph's.

    """
    model = _load(path)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise InvalidModel(f"onnx.checker refused the model: {_first_line(exc)}") from exc
    opset = _opset(model, min_opset=min_opset, max_opset=max_opset)
    actual = graph_signature(model)
    problems = signature_differences(declared=declared, actual=actual)
    if problems:
        raise SignatureMismatch(
            "declared signature differs from the model graph: " + "; ".join(problems)
            + ". Declare the graph's inputs and outputs exactly (names, datatypes, shapes with -1 for dynamic)"
        )
    _run_dummy_batch(path, actual, dummy_batch)
    return ValidatedModel(opset=opset, signature=actual)


def _load(path: Path) -> onnx.ModelProto:
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and others for arbitrary bytes
        raise InvalidModel(f"artifact is not an ONNX model (protobuf could not parse it: {_first_line(exc)})") from exc
    if not model.HasField("graph") or not model.graph.node:
        raise InvalidModel("artifact is not an ONNX model: it has no graph nodes")
    for tensor in _all_tensors(model.graph):
        if tensor.data_location == TensorProto.EXTERNAL or tensor.external_data:
            raise InvalidModel(
                f"tensor {tensor.name!r} keeps its data in an external file; "
                "save the model with all tensors inside it (onnx.save(..., save_as_external_data=False))"
            )
    return model


def _all_tensors(graph: onnx.GraphProto) -> list[TensorProto]:
    tensors = list(graph.initializer) + [s.values for s in graph.sparse_initializer]
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                tensors.append(attr.t)
            tensors.extend(attr.tensors)
            if attr.HasField("g"):
                tensors.extend(_all_tensors(attr.g))
            for sub in attr.graphs:
                tensors.extend(_all_tensors(sub))
    return tensors


def _opset(model: onnx.ModelProto, *, min_opset: int, max_opset: int) -> int:
    opset: int | None = None
    for entry in model.opset_import:
        if entry.domain not in ALLOWED_DOMAINS:
            raise OpsetNotAllowed(
                f"model imports operator domain {entry.domain!r}; only the standard domains "
                f"({', '.join(repr(d) for d in sorted(ALLOWED_DOMAINS))}) are allowed"
            )
        if entry.domain in ("", "ai.onnx"):
            opset = int(entry.version)
    if opset is None:
        raise InvalidModel("model declares no default-domain opset")
    if not min_opset <= opset <= max_opset:
        raise OpsetNotAllowed(
            f"model opset {opset} is outside the allowed range {min_opset}..{max_opset}; "
            f"export with an opset in that range"
        )
    return opset


def graph_signature(model: onnx.ModelProto) -> Signature:
    """The inputs (less initializers) and outputs of ``model``'s graph, as tensor specs.

    Raises:
        InvalidModel: an input or output is not a tensor of a supported datatype.

    """
    initializers = {t.name for t in model.graph.initializer}
    inputs = [_spec(v) for v in model.graph.input if v.name not in initializers]
    outputs = [_spec(v) for v in model.graph.output]
    if not inputs or not outputs:
        raise InvalidModel("model graph needs at least one input and one output")
    return Signature(inputs=inputs, outputs=outputs)


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    if value.type.WhichOneof("value") != "tensor_type":
        raise InvalidModel(f"graph input/output {value.name!r} is not a tensor; only tensors can be served")
    tensor = value.type.tensor_type
    datatype = _DATATYPES.get(tensor.elem_type)
    if datatype is None:
        name = TensorProto.DataType.Name(tensor.elem_type)
        raise InvalidModel(f"graph input/output {value.name!r} has unsupported datatype {name}")
    if not tensor.HasField("shape"):
        raise InvalidModel(f"graph input/output {value.name!r} has no shape; export it with a fixed rank")
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    return TensorSpec(name=value.name, datatype=datatype, shape=shape)


def signature_differences(*, declared: Signature, actual: Signature) -> list[str]:
    """Human-readable differences between two signatures (empty when equal).

    >>> a = Signature(inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 3])],
    ...               outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 1])])
    >>> b = Signature(inputs=[TensorSpec(name="x", datatype="FP64", shape=[-1, 4])], outputs=a.outputs)
    >>> signature_differences(declared=b, actual=a)
    ["input 'x': declared FP64 [-1, 4], graph has FP32 [-1, 3]"]
    """
    return _side("input", declared.inputs, actual.inputs) + _side("output", declared.outputs, actual.outputs)


def _side(kind: str, declared: Sequence[TensorSpec], actual: Sequence[TensorSpec]) -> list[str]:
    if [s.name for s in declared] != [s.name for s in actual]:
        return [f"{kind}s declared {[s.name for s in declared]}, graph has {[s.name for s in actual]}"]
    return [
        f"{kind} {d.name!r}: declared {d.datatype} {d.shape}, graph has {a.datatype} {a.shape}"
        for d, a in zip(declared, actual, strict=True)
        if (d.datatype, d.shape) != (a.datatype, a.shape)
    ]


def _run_dummy_batch(path: Path, signature: Signature, batch: int) -> None:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1  # a test batch needs no parallelism; fewer threads in the sandbox
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped exceptions
        raise InvalidModel(f"onnxruntime could not load the model: {_first_line(exc)}") from exc
    feeds: dict[str, Any] = {}
    for spec in signature.inputs:
        shape = [batch if i == 0 and d < 0 else max(d, 1) for i, d in enumerate(spec.shape)]
        if int(np.prod(shape, dtype=np.int64)) > MAX_DUMMY_ELEMENTS:
            raise InvalidModel(f"input {spec.name!r} of shape {spec.shape} is too large to test-run")
        dtype = _NUMPY[spec.datatype]
        feeds[spec.name] = np.full(shape, "", dtype=object) if dtype is np.object_ else np.zeros(shape, dtype=dtype)
    try:
        results = session.run(None, feeds)
    except Exception as exc:
        raise InvalidModel(f"onnxruntime could not run a batch of zeros through the model: {_first_line(exc)}") from exc
    if len(results) != len(signature.outputs):
        raise InvalidModel(f"model returned {len(results)} outputs for {len(signature.outputs)} declared")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    line = text.splitlines()[0]
    return line if len(line) <= 500 else line[:500] + "..."
