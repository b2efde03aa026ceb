"""The model input contract: how named feature values become the exported model's input tensors.

Preprocessing (imputation, standardisation, category lookup) lives inside the exported ONNX
graph, so a caller only turns each feature into a raw number or a category index:

* ``numeric`` — FP32 ``[-1, len(numeric)]``, one column per numeric feature in contract order;
  the raw value, ``NaN`` when missing (the graph imputes the training mean).
* ``categorical`` — INT64 ``[-1, len(categorical)]``, one column per categorical feature in
  contract order; ``vocabulary.index(value) + 1``, and ``0`` for missing or unknown values
  (the graph also maps any out-of-range index to 0).

An input with no column is left out of the graph. The contract travels with the model: as the
JSON metadata property ``tributary.input_contract`` of the ONNX file and under
``reference_stats["input_contract"]`` in the registry.

>>> c = InputContract(task="binary", numeric=["age"], categorical=[CategoricalInput(name="region",
...     vocabulary=["north", "south"])], classes=["0", "1"], output="probability")
>>> t = c.encode([{"age": 30, "region": "south"}, {"age": None, "region": "mars"}])
>>> t["numeric"].tolist(), t["categorical"].tolist()
([[30.0], [nan]], [[2], [0]])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from schemas.registry import TensorSpec

CONTRACT_KEY = "tributary.input_contract"
"""ONNX metadata property (and ``reference_stats`` key) holding the contract JSON."""

Task = Literal["binary", "multiclass", "regression"]

OUTPUT_NAMES: dict[str, str] = {"binary": "probability", "multiclass": "probabilities", "regression": "prediction"}
"""The single output of each task: P(classes[1]) [-1, 1], class probabilities [-1, C], or the target [-1, 1]."""


class CategoricalInput(BaseModel):
    """One categorical column: index ``i + 1`` stands for ``vocabulary[i]``; 0 is missing or unknown."""

    model_config = ConfigDict(frozen=True)

    name: str
    vocabulary: list[str]


class InputContract(BaseModel):
    """What the exported graph takes and gives; enough for any caller to build its tensors."""

    model_config = ConfigDict(frozen=True)

    format: Literal["tributary.tabular.v1"] = "tributary.tabular.v1"
    task: Task
    numeric: list[str] = Field(default_factory=list, description="Columns of the `numeric` input, in order.")
    categorical: list[CategoricalInput] = Field(default_factory=list,
                                                description="Columns of the `categorical` input, in order.")
    classes: list[str] = Field(default_factory=list, description="Label values (as text) in output order.")
    output: str

    def input_names(self) -> list[str]:
        """The graph's inputs, in order (an input with no column is absent)."""
        return [name for name, cols in (("numeric", self.numeric), ("categorical", self.categorical)) if cols]

    def inputs(self) -> list[TensorSpec]:
        """The graph's inputs as registry tensor specs."""
        out = []
        if self.numeric:
            out.append(TensorSpec(name="numeric", datatype="FP32", shape=[-1, len(self.numeric)]))
        if self.categorical:
            out.append(TensorSpec(name="categorical", datatype="INT64", shape=[-1, len(self.categorical)]))
        return out

    def outputs(self) -> list[TensorSpec]:
        """The graph's single output as a registry tensor spec."""
        width = len(self.classes) if self.task == "multiclass" else 1
        return [TensorSpec(name=self.output, datatype="FP32", shape=[-1, width])]

    def encode(self, rows: Sequence[Mapping[str, object]]) -> dict[str, np.ndarray]:
        """The input tensors for ``rows`` of named raw feature values (missing names count as missing)."""
        tensors: dict[str, np.ndarray] = {}
        if self.numeric:
            numeric = np.full((len(rows), len(self.numeric)), np.nan, dtype=np.float32)
            for i, row in enumerate(rows):
                for j, name in enumerate(self.numeric):
                    numeric[i, j] = _number(row.get(name))
            tensors["numeric"] = numeric
        if self.categorical:
            lookups = [{v: k + 1 for k, v in enumerate(c.vocabulary)} for c in self.categorical]
            categorical = np.zeros((len(rows), len(self.categorical)), dtype=np.int64)
            for i, row in enumerate(rows):
                for j, column in enumerate(self.categorical):
                    value = row.get(column.name)
                    categorical[i, j] = 0 if value is None else lookups[j].get(category_text(value), 0)
            tensors["categorical"] = categorical
        return tensors


def category_text(value: object) -> str:
    """The text of a categorical value as vocabularies store it."""
    return value if isinstance(value, str) else str(value)


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)
