"""Tensors and the KServe v2 REST encoding of them (JSON, and the binary tensor extension).

A :class:`Tensor` is what the core works with whatever the transport: a name, a v2 datatype,
and a numpy array of exactly its shape. Every malformed input becomes :class:`InvalidInput`
naming the tensor and the problem.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference.errors import InvalidInput

NUMPY: dict[str, Any] = {
    "BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}
"""numpy dtype of each v2 datatype."""

_DATATYPE = {np.dtype(v): k for k, v in NUMPY.items() if k != "BYTES"}
_WIRE = {k: np.dtype(v).newbyteorder("<") for k, v in NUMPY.items() if k != "BYTES"}
"""Little-endian numpy dtype of each fixed-size v2 datatype (the binary extension's byte order)."""


@dataclass(frozen=True, slots=True)
class Tensor:
    """One named tensor: a v2 datatype and a numpy array holding exactly its shape."""

    name: str
    datatype: str
    array: np.ndarray[Any, Any]

    @property
    def shape(self) -> list[int]:
        """The dimensions."""
        return [int(d) for d in self.array.shape]

    @classmethod
    def of(cls, name: str, array: np.ndarray[Any, Any]) -> Tensor:
        """A tensor from a numpy array, its datatype from the dtype (object and strings: BYTES)."""
        if array.dtype == np.object_ or array.dtype.kind in "SU":
            return cls(name, "BYTES", array.astype(np.object_))
        try:
            return cls(name, _DATATYPE[array.dtype], array)
        except KeyError:
            raise InvalidInput(f"tensor {name!r}: numpy dtype {array.dtype} has no v2 datatype") from None


@dataclass(frozen=True, slots=True)
class Spec:
    """A model input or output as the backend declares it; -1 marks a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def check_shape(shape: Any, name: str) -> list[int]:
    """``shape`` as a list of non-negative ints, or InvalidInput."""
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidInput(f"tensor {name!r}: shape must be a list of integers, got {shape!r}")
    if any(d < 0 for d in shape):
        raise InvalidInput(f"tensor {name!r}: shape {shape} has a negative dimension")
    return shape


def from_values(name: str, datatype: Any, shape: Any, data: Any) -> Tensor:
    """A tensor from v2 JSON parts: ``data`` flat or nested, row-major.

    Raises:
        InvalidInput: unknown datatype, bad shape, values of the wrong type or count.

    """
    if not isinstance(name, str) or not name:
        raise InvalidInput("every tensor needs a non-empty 'name'")
    if datatype not in NUMPY:
        raise InvalidInput(f"tensor {name!r}: unknown datatype {datatype!r}; use one of {', '.join(NUMPY)}")
    dims = check_shape(shape, name)
    if not isinstance(data, list):
        raise InvalidInput(f"tensor {name!r}: 'data' must be a JSON array")
    try:
        if datatype == "BYTES":
            flat = np.array([_as_bytes(v, name) for v in _flatten(data)] or [], dtype=np.object_)
        else:
            flat = np.asarray(data, dtype=NUMPY[datatype]).reshape(-1)
            if datatype.startswith(("INT", "UINT")) and _has_fraction(data):
                raise InvalidInput(f"tensor {name!r}: {datatype} data has non-integer values")
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"tensor {name!r}: data is not {datatype}: {exc}") from None
    expected = int(np.prod(dims)) if dims else 1
    if flat.size != expected:
        raise InvalidInput(f"tensor {name!r}: shape {dims} needs {expected} values, data has {flat.size}")
    return Tensor(name, datatype, flat.reshape(dims))


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    for v in data:
        if isinstance(v, list):
            out += _flatten(v)
        else:
            out.append(v)
    return out


def _has_fraction(data: list[Any]) -> bool:
    return any(isinstance(v, float) and not v.is_integer() for v in _flatten(data))


def _as_bytes(value: Any, name: str) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return value
    raise InvalidInput(f"tensor {name!r}: BYTES data must be strings, got {type(value).__name__}")


def from_raw(name: str, datatype: Any, shape: Any, raw: bytes | memoryview) -> Tensor:
    """A tensor from the binary tensor extension's bytes (little-endian; BYTES length-prefixed).

    Raises:
        InvalidInput: unknown datatype, bad shape, or a byte count that does not match.

    """
    if datatype not in NUMPY:
        raise InvalidInput(f"tensor {name!r}: unknown datatype {datatype!r}; use one of {', '.join(NUMPY)}")
    dims = check_shape(shape, name)
    expected = math.prod(dims)
    if datatype == "BYTES":
        items = _split_bytes(bytes(raw), name)
        if len(items) != expected:
            raise InvalidInput(f"tensor {name!r}: shape {dims} needs {expected} elements, got {len(items)}")
        return Tensor(name, datatype, np.array(items, dtype=np.object_).reshape(dims))
    dtype = _WIRE[datatype]
    if len(raw) != expected * dtype.itemsize:
        raise InvalidInput(f"tensor {name!r}: shape {dims} of {datatype} needs {expected * dtype.itemsize} bytes, "
                           f"got {len(raw)}")
    return Tensor(name, datatype, np.frombuffer(raw, dtype=dtype).reshape(dims))


def _split_bytes(raw: bytes, name: str) -> list[bytes]:
    items: list[bytes] = []
    at = 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise InvalidInput(f"tensor {name!r}: truncated BYTES element length")
        (size,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + size > len(raw):
            raise InvalidInput(f"tensor {name!r}: BYTES element runs past the end of the data")
        items.append(raw[at:at + size])
        at += size
    return items


def to_raw(tensor: Tensor) -> bytes:
    """The binary tensor extension's bytes of ``tensor``."""
    if tensor.datatype == "BYTES":
        parts = []
        for item in tensor.array.reshape(-1):
            b = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(b)) + b)
        return b"".join(parts)
    return np.ascontiguousarray(tensor.array, dtype=_WIRE[tensor.datatype]).tobytes()


def to_list(tensor: Tensor) -> list[Any]:
    """The tensor's values flattened for JSON (BYTES decoded as UTF-8 text)."""
    flat = tensor.array.reshape(-1)
    if tensor.datatype == "BYTES":
        return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in flat]
    values: list[Any] = flat.tolist()
    return values


def check_against(inputs: list[Tensor], specs: list[Spec], *, model: str, max_batch_size: int) -> None:
    """Refuse inputs that do not match the model's signature, naming what to change.

    Raises:
        InvalidInput: a missing, unknown or duplicated input, a wrong datatype or shape.

    """
    by_name = {s.name: s for s in specs}
    seen: set[str] = set()
    for t in inputs:
        spec = by_name.get(t.name)
        if spec is None:
            raise InvalidInput(f"model {model!r} has no input {t.name!r}; its inputs are {sorted(by_name)}")
        if t.name in seen:
            raise InvalidInput(f"input {t.name!r} is given twice")
        seen.add(t.name)
        if t.datatype != spec.datatype:
            raise InvalidInput(f"input {t.name!r} of model {model!r} is {spec.datatype}, not {t.datatype}")
        shape = t.shape
        if len(shape) != len(spec.shape) or any(e != -1 and e != d for e, d in zip(spec.shape, shape, strict=True)):
            raise InvalidInput(f"input {t.name!r} of model {model!r} has shape {list(spec.shape)} (-1: any), "
                               f"got {shape}")
        if max_batch_size > 0 and shape and shape[0] > max_batch_size:
            raise InvalidInput(f"batch of {shape[0]} rows is over model {model!r}'s maximum of {max_batch_size}")
    missing = sorted(set(by_name) - seen)
    if missing:
        raise InvalidInput(f"model {model!r} needs input(s) {missing}")


@dataclass(frozen=True, slots=True)
class Signature:
    """What a model version takes and returns, as its backend declares it."""

    inputs: list[Spec]
    outputs: list[Spec]
    max_batch_size: int = 0
    platform: str = ""
    dynamic_batching: bool = False
    """Whether the backend batches concurrent calls itself (Triton's ``dynamic_batching``)."""


def stack_rows(parts: list[list[Tensor]]) -> list[Tensor]:
    """Stack the inputs of several requests row-wise (same names, in the same order): one batched call.

    >>> a = [Tensor("x", "FP32", np.zeros((1, 2), np.float32))]
    >>> b = [Tensor("x", "FP32", np.ones((2, 2), np.float32))]
    >>> stack_rows([a, b])[0].array.tolist()
    [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
    """
    if len(parts) == 1:
        return parts[0]
    return [Tensor(t.name, t.datatype, np.concatenate([p[i].array for p in parts], axis=0))
            for i, t in enumerate(parts[0])]


def split_rows(outputs: list[Tensor], counts: list[int]) -> list[list[Tensor]] | None:
    """A batched call's outputs cut back into each request's rows; None when they cannot be.

    ``counts`` are the requests' row counts in the order of :func:`stack_rows`; an output that
    does not have one row per input row cannot be split.

    >>> out = [Tensor("y", "FP32", np.array([[1.0], [2.0], [3.0]], dtype=np.float32))]
    >>> [[t.array.ravel().tolist() for t in part] for part in split_rows(out, [1, 2])]
    [[[1.0]], [[2.0, 3.0]]]
    """
    total = sum(counts)
    if any(t.array.ndim == 0 or t.array.shape[0] != total for t in outputs):
        return None
    if len(counts) == 1:
        return [outputs]
    parts: list[list[Tensor]] = []
    at = 0
    for n in counts:
        parts.append([Tensor(t.name, t.datatype, t.array[at:at + n]) for t in outputs])
        at += n
    return parts
