"""Training, export and parity on synthetic data: loss goes down, no NaN, same seed gives the same bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import onnx
import pytest
from schemas.dataset import DatasetSpec
from trainer.contract import CONTRACT_KEY, InputContract
from trainer.errors import BudgetExceeded, NanLoss, ParityFailed
from trainer.evaluation import evaluate_arrays
from trainer.onnx_model import OnnxModel, check_parity
from trainer.table import Example, Table, build_table
from trainer.training import FitConfig, export_onnx, fit, predict

FAST = FitConfig(max_epochs=12, patience=4, hidden=(16, 8), batch_size=64)


def table_of(examples: list[Example], spec: DatasetSpec) -> Table:
    return build_table(examples, spec, holdout_fraction=0.2, validation_fraction=0.15, min_rows=50,
                       max_categories=100)


@pytest.mark.parametrize("label", ["binary", "multiclass", "regression"])
def test_loss_decreases_without_nan_and_the_model_learns(label: str, make_examples: Callable[..., list[Example]],
                                                         make_spec: Callable[..., DatasetSpec]) -> None:
    table = table_of(make_examples(800, seed=1, label=label), make_spec("d", label))
    result = fit(table, FAST)
    assert all(np.isfinite(result.train_losses)) and all(np.isfinite(result.validation_losses))
    assert result.train_losses[-1] < result.train_losses[0] * 0.8
    assert min(result.validation_losses) < result.validation_losses[0]
    scores = predict(result.model, table.holdout.inputs)
    assert np.all(np.isfinite(scores))
    got = evaluate_arrays(table.contract.task, table.holdout.target, scores)
    if label == "regression":
        assert got["rmse"] < float(np.std(table.holdout.target)) * 0.6
    else:
        assert got["auc"] > 0.8 and got["accuracy"] > 0.6


def test_same_data_and_seed_give_identical_onnx_bytes_and_another_seed_does_not(
        make_examples: Callable[..., list[Example]], make_spec: Callable[..., DatasetSpec]) -> None:
    table = table_of(make_examples(400, seed=2), make_spec("d"))
    first = export_onnx(fit(table, FAST).model, table.contract, opset=17)
    again = export_onnx(fit(table, FAST).model, table.contract, opset=17)
    other = export_onnx(fit(table, replace(FAST, seed=7)).model, table.contract, opset=17)
    assert hashlib.sha256(first).hexdigest() == hashlib.sha256(again).hexdigest()
    assert first != other


def test_onnx_export_has_a_dynamic_batch_axis_the_contract_and_parity(
        make_examples: Callable[..., list[Example]], make_spec: Callable[..., DatasetSpec]) -> None:
    table = table_of(make_examples(400, seed=3), make_spec("d"))
    model = fit(table, FAST).model
    data = export_onnx(model, table.contract, opset=17)
    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto, full_check=True)
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert inputs == {"numeric": ["batch", 2], "categorical": ["batch", 2]}
    assert [o.name for o in proto.graph.output] == ["probability"]
    runtime = OnnxModel(data)
    assert runtime.contract() == table.contract
    for rows in (1, 7, len(table.holdout)):
        batch = {k: v[:rows] for k, v in table.holdout.inputs.items()}
        assert runtime.run(batch).shape == (rows, 1)
        assert check_parity(runtime, batch, predict(model, batch), tolerance=1e-4) <= 1e-4
    # Missing numbers and unknown or out-of-range categories are handled inside the graph.
    odd = table.contract.encode([{"x1": None, "x2": None, "region": "mars", "segment": None}])
    odd["categorical"][0, 1] = 99
    assert np.all(np.isfinite(runtime.run(odd)))
    assert abs(float(runtime.run(odd)[0, 0]) - float(predict(model, odd)[0, 0])) <= 1e-5


def test_parity_failure_is_reported(make_examples: Callable[..., list[Example]],
                                    make_spec: Callable[..., DatasetSpec]) -> None:
    table = table_of(make_examples(300, seed=4), make_spec("d"))
    model = fit(table, FAST).model
    runtime = OnnxModel(export_onnx(model, table.contract, opset=17))
    shifted = predict(model, table.holdout.inputs) + 1e-3
    with pytest.raises(ParityFailed, match="differs from PyTorch"):
        check_parity(runtime, table.holdout.inputs, shifted, tolerance=1e-4)


def test_a_diverging_run_fails_with_nan_loss(make_examples: Callable[..., list[Example]],
                                             make_spec: Callable[..., DatasetSpec]) -> None:
    table = table_of(make_examples(300, seed=5, label="regression"), make_spec("d", "regression"))
    with pytest.raises(NanLoss, match="loss became"):
        fit(table, replace(FAST, learning_rate=1e30, max_epochs=30))


def test_budgets(make_examples: Callable[..., list[Example]], make_spec: Callable[..., DatasetSpec]) -> None:
    table = table_of(make_examples(300, seed=6), make_spec("d"))
    with pytest.raises(BudgetExceeded, match="TRAINER_MEMORY_BUDGET_MB"):
        fit(table, replace(FAST, memory_budget_mb=0.001))
    result = fit(table, replace(FAST, time_budget_s=1e-9, max_epochs=50))
    assert result.stopped_because == "time_budget" and result.epochs == 1


def test_only_numeric_or_only_categorical_inputs(make_examples: Callable[..., list[Example]]) -> None:
    for features in ([{"name": "x1", "type": "numeric"}], [{"name": "region", "type": "categorical"}]):
        spec = DatasetSpec.model_validate({"name": "d", "features": features, "label": {"type": "binary"}})
        table = table_of(make_examples(300, seed=8), spec)
        model = fit(table, FAST).model
        data = export_onnx(model, table.contract, opset=17)
        runtime = OnnxModel(data)
        assert runtime.input_names == table.contract.input_names()
        assert check_parity(runtime, table.holdout.inputs, predict(model, table.holdout.inputs), tolerance=1e-4) < 1e-4


def test_contract_is_in_the_onnx_metadata(make_examples: Callable[..., list[Example]],
                                          make_spec: Callable[..., DatasetSpec]) -> None:
    table = table_of(make_examples(200, seed=9), make_spec("d"))
    proto = onnx.load_from_string(export_onnx(fit(table, FAST).model, table.contract, opset=17))
    meta: dict[str, Any] = {p.key: p.value for p in proto.metadata_props}
    contract = InputContract.model_validate_json(meta[CONTRACT_KEY])
    assert contract.numeric == ["x1", "x2"]
    assert [c.name for c in contract.categorical] == ["region", "segment"]
    assert contract.categorical[0].vocabulary == ["north", "south", "east", "west"]
    assert sorted(contract.categorical[1].vocabulary) == ["a", "b", "c", "d", "e"]
