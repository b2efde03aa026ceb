"""ONNX export of a trained network: one dynamic batch axis, the input contract as metadata.

The legacy TorchScript exporter is used (``dynamo=False``): it needs no extra packages and its
output is byte-for-byte reproducible for the same weights. The contract JSON is stored in the
model's ``metadata_props`` under ``tributary.input_contract``.
"""

from __future__ import annotations

import io
import warnings

import onnx
import torch

from trainer.contract import CONTRACT_KEY, InputContract
from trainer.training.model import ServingModule, TabularNet


def export_onnx(model: TabularNet, contract: InputContract, *, opset: int) -> bytes:
    """The ONNX bytes of ``model`` serving ``contract`` (inputs ``numeric``/``categorical``, batch axis dynamic)."""
    serving = ServingModule(model).eval()
    names = contract.input_names()
    example: list[torch.Tensor] = []
    if contract.numeric:
        example.append(torch.zeros(2, len(contract.numeric), dtype=torch.float32))
    if contract.categorical:
        example.append(torch.zeros(2, len(contract.categorical), dtype=torch.int64))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo, which needs onnxscript.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(
            serving, tuple(example), buffer,  # type: ignore[arg-type]
            input_names=names, output_names=[contract.output],
            dynamic_axes={name: {0: "batch"} for name in [*names, contract.output]},
            opset_version=opset, do_constant_folding=True, dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    proto.producer_name = "tributary-trainer"
    entry = proto.metadata_props.add()
    entry.key, entry.value = CONTRACT_KEY, contract.model_dump_json()
    onnx.checker.check_model(proto)
    data: bytes = proto.SerializeToString()
    return data
