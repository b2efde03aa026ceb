"""ONNX models through onnxruntime: scoring the candidate and the champion, and the parity check.

The parity check runs the exported bytes on the holdout and compares with the PyTorch outputs;
a model whose largest absolute difference is above the tolerance is never registered.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import onnxruntime as ort

from trainer.contract import CONTRACT_KEY, InputContract
from trainer.errors import ChampionUnusable, ParityFailed


class OnnxModel:
    """An ONNX model in an onnxruntime CPU session (one thread: results do not depend on the machine's load)."""

    def __init__(self, data: bytes) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.metadata: dict[str, str] = dict(self._session.get_modelmeta().custom_metadata_map)

    def contract(self) -> InputContract | None:
        """The input contract stored in the model, when it has one."""
        raw = self.metadata.get(CONTRACT_KEY)
        return InputContract.model_validate(json.loads(raw)) if raw else None

    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The first output for ``inputs`` (keyed by input name)."""
        out = self._session.run(None, {name: inputs[name] for name in self.input_names})
        result: np.ndarray = np.asarray(out[0])
        return result


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """The largest absolute difference of two arrays of one shape (inf when shapes differ).

    >>> max_abs_diff(np.array([1.0, 2.0]), np.array([1.0, 2.5]))
    0.5
    """
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def check_parity(onnx_model: OnnxModel, inputs: Mapping[str, np.ndarray], torch_outputs: np.ndarray, *,
                 tolerance: float) -> float:
    """The largest absolute difference of onnxruntime's outputs from PyTorch's on ``inputs``.

    Raises:
        ParityFailed: the difference is above ``tolerance`` (or is NaN).

    """
    diff = max_abs_diff(onnx_model.run(inputs), torch_outputs)
    if not diff <= tolerance:
        raise ParityFailed(f"onnxruntime differs from PyTorch by up to {diff:.3g} on the holdout (tolerance "
                           f"{tolerance:g}); the export is wrong, nothing was registered")
    return diff


def load_champion(data: bytes, fallback: InputContract | None) -> tuple[OnnxModel, InputContract]:
    """The champion's model and contract (its own, else ``fallback`` from its registry metadata).

    Raises:
        ChampionUnusable: the bytes do not load, or no contract is known.

    """
    try:
        model = OnnxModel(data)
    except Exception as exc:  # onnxruntime raises its own unrelated exception types
        raise ChampionUnusable(f"the champion's artifact does not load in onnxruntime: {exc}") from exc
    contract = model.contract() or fallback
    if contract is None:
        raise ChampionUnusable("the champion has no input contract (not trained by this trainer?), so it cannot "
                               "be scored on the holdout; review and promote the candidate by hand")
    return model, contract
