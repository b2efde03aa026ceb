"""The training table: time-ordered splits, fitted on training rows only; labels; the input contract."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from schemas.dataset import DatasetSpec, LabelSpec
from trainer.contract import CategoricalInput, InputContract
from trainer.errors import LabelsMissing, TooFewRows
from trainer.table import Example, LabelEncoder, build_table


def test_splits_are_by_time_and_fitted_on_training_rows_only(make_examples: Callable[..., list[Example]],
                                                            make_spec: Callable[..., DatasetSpec]) -> None:
    examples = make_examples(100, seed=0)
    shuffled = list(reversed(examples))
    table = build_table(shuffled, make_spec("d"), holdout_fraction=0.2, validation_fraction=0.25, min_rows=10,
                        max_categories=100)
    assert (len(table.train), len(table.validation), len(table.holdout)) == (60, 20, 20)
    times = [r.event_time for part in (table.train, table.validation, table.holdout) for r in part.rows]
    assert times == sorted(times)
    x1 = np.array([r.features["x1"] for r in table.train.rows])
    assert table.preprocessing.numeric_mean[0] == pytest.approx(x1.mean(), rel=1e-5)
    # The learned vocabulary comes from the training rows, most frequent first.
    seen = {r.features["segment"] for r in table.train.rows}
    assert set(table.contract.categorical[1].vocabulary) == seen


def test_label_encoding() -> None:
    binary = LabelEncoder(LabelSpec(type="binary"))
    assert [binary.encode(v) for v in (True, False, 1, 0, "1", "yes", "maybe", 2)] == [1, 0, 1, 0, 1, 1, None, None]
    named = LabelEncoder(LabelSpec(type="binary", classes=["good", "bad"]))
    assert (named.encode("bad"), named.encode("good"), named.encode("ugly")) == (1, 0, None)
    regression = LabelEncoder(LabelSpec(type="regression"))
    assert (regression.encode(2), regression.encode("x"), regression.encode(True)) == (2.0, None, None)


def test_missing_labels_and_too_few_rows(make_examples: Callable[..., list[Example]],
                                         make_spec: Callable[..., DatasetSpec]) -> None:
    spec = make_spec("d")
    unlabelled = [Example(e.event_id, e.entity_id, e.event_time, e.features, "n/a") for e in make_examples(20)]
    with pytest.raises(LabelsMissing, match="has a valid label"):
        build_table(unlabelled, spec, holdout_fraction=0.2, validation_fraction=0.2, min_rows=10, max_categories=10)
    with pytest.raises(TooFewRows, match="at least 50"):
        build_table(make_examples(20), spec, holdout_fraction=0.2, validation_fraction=0.2, min_rows=50,
                    max_categories=10)


def test_contract_encoding_and_signature() -> None:
    contract = InputContract(task="multiclass", numeric=["a", "b"],
                             categorical=[CategoricalInput(name="c", vocabulary=["x", "y"])],
                             classes=["l", "m", "h"], output="probabilities")
    tensors = contract.encode([{"a": 1, "b": True, "c": "y"}, {"c": 3}])
    assert tensors["numeric"].dtype == np.float32 and tensors["categorical"].dtype == np.int64
    assert np.isnan(tensors["numeric"][0, 1]) and tensors["categorical"].tolist() == [[2], [0]]
    assert [(t.name, t.datatype, t.shape) for t in contract.inputs()] == [("numeric", "FP32", [-1, 2]),
                                                                         ("categorical", "INT64", [-1, 1])]
    assert [(t.name, t.shape) for t in contract.outputs()] == [("probabilities", [-1, 3])]
