"""In-process onnxruntime: the fallback backend when Triton is unreachable.

Reads the same ``<repo>/<model>/<version>/model.onnx`` files Triton serves (the registry's
repository), so a fallback answer comes from exactly the bytes Triton would have run. Sessions
are created on first use and kept; inference runs in a worker thread so the event loop never
blocks.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from inference.errors import BackendTimeout, BackendUnavailable, InvalidInput, ModelNotFound
from inference.tensors import NUMPY, Signature, Spec, Tensor

_ONNX_TYPES = {
    "tensor(bool)": "BOOL", "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32",
    "tensor(int64)": "INT64", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64", "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


class OnnxFallback:
    """Runs model versions from the model repository with onnxruntime on CPU.

    Args:
        root: the model repository (``<root>/<model>/<version>/model.onnx``).
        threads: intra-op threads per session.

    """

    name = "onnxruntime"

    def __init__(self, root: Path, *, threads: int = 1) -> None:
        self.root = root.resolve()
        self.threads = threads
        self._sessions: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()

    def _session(self, model: str, version: int) -> Any:
        key = (model, version)
        with self._lock:
            session = self._sessions.get(key)
            if session is not None:
                return session
            path = (self.root / model / str(version) / "model.onnx").resolve()
            if path.parent.parent.parent != self.root or not path.is_file():
                raise ModelNotFound(f"the fallback has no model.onnx for {model} v{version} under {self.root}")
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            try:
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            except Exception as exc:
                raise BackendUnavailable(f"the fallback could not load {model} v{version}: {exc}") from exc
            self._sessions[key] = session
            return session

    async def signature(self, model: str, version: int) -> Signature:
        """Inputs and outputs of the version's ONNX graph (symbolic dimensions as -1)."""
        session: Any = self._sessions.get((model, version))
        if session is None:
            session = await asyncio.to_thread(self._session, model, version)
        return Signature(inputs=[_spec(i) for i in session.get_inputs()],
                         outputs=[_spec(o) for o in session.get_outputs()], platform="onnxruntime")

    async def infer(self, model: str, version: int, inputs: list[Tensor], outputs: list[str] | None, *,
                    timeout_s: float, request_id: str = "") -> list[Tensor]:
        """Run the version on ``inputs`` in a worker thread, within ``timeout_s``."""
        # A loaded session is taken without a thread hop (a dict read); only loading one goes to a thread.
        session: Any = self._sessions.get((model, version))
        if session is None:
            session = await asyncio.to_thread(self._session, model, version)
        names = outputs or [o.name for o in session.get_outputs()]
        types = {o.name: _ONNX_TYPES.get(o.type, "FP32") for o in session.get_outputs()}
        unknown = [n for n in names if n not in types]
        if unknown:
            raise InvalidInput(f"model {model!r} has no output(s) {unknown}")
        feed = {t.name: (t.array.astype(np.str_) if t.datatype == "BYTES" else t.array) for t in inputs}
        try:
            values = await asyncio.wait_for(asyncio.to_thread(session.run, names, feed), timeout_s)
        except TimeoutError:
            raise BackendTimeout(f"the onnxruntime fallback did not finish {model} v{version} in time") from None
        except Exception as exc:  # onnxruntime raises its own exception types for bad feeds
            raise InvalidInput(f"onnxruntime refused the request for {model} v{version}: {exc}") from exc
        return [Tensor(n, types[n], np.asarray(v, dtype=NUMPY[types[n]])) for n, v in zip(names, values, strict=True)]

    async def ready(self) -> bool:
        """The fallback is always ready (it loads versions on demand)."""
        return True

    async def model_ready(self, model: str, version: int) -> bool:
        """Whether the version's ONNX file is present and loads."""
        try:
            await asyncio.to_thread(self._session, model, version)
        except (ModelNotFound, BackendUnavailable):
            return False
        return True

    async def close(self) -> None:
        """Forget every session."""
        with self._lock:
            self._sessions.clear()


def _spec(node: Any) -> Spec:
    shape = tuple(d if isinstance(d, int) else -1 for d in (node.shape or []))
    return Spec(node.name, _ONNX_TYPES.get(node.type, "FP32"), shape)
