"""The training table: labelled rows of a window, split by time and turned into arrays.

Everything here is plain numpy and deterministic: rows are ordered by ``(event_time,
event_id)``, the latest rows are the holdout, the latest of the rest are the early-stopping
validation set, and every fitted quantity (vocabularies, means, deviations) comes from the
training rows only, so nothing of the holdout leaks into the model.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from schemas.dataset import DatasetSpec, LabelSpec

from trainer.contract import OUTPUT_NAMES, CategoricalInput, InputContract, category_text
from trainer.errors import LabelsMissing, TooFewRows

MISSING = "<missing>"
"""Slice name of rows whose categorical value is missing."""


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled row of the window."""

    event_id: str
    entity_id: str
    event_time: float
    features: dict[str, object]
    label: object


@dataclass(frozen=True, slots=True)
class Split:
    """Rows of one part of the table, as the model's inputs, targets and raw slice values."""

    inputs: dict[str, np.ndarray]
    target: np.ndarray
    rows: list[Example]

    def __len__(self) -> int:
        return len(self.rows)

    def slices(self, feature: str) -> np.ndarray:
        """The raw category of ``feature`` per row (``<missing>`` when absent), for per-slice metrics."""
        return np.array([MISSING if r.features.get(feature) is None else category_text(r.features[feature])
                         for r in self.rows], dtype=object)


@dataclass(frozen=True, slots=True)
class Preprocessing:
    """What the graph needs to preprocess raw inputs, fitted on the training rows."""

    numeric_mean: np.ndarray
    numeric_std: np.ndarray
    target_mean: float
    target_std: float


@dataclass(frozen=True, slots=True)
class Table:
    """A window ready to train on."""

    contract: InputContract
    preprocessing: Preprocessing
    train: Split
    validation: Split
    holdout: Split
    dropped_labels: int

    @property
    def n_outputs(self) -> int:
        """Width of the model's head."""
        return len(self.contract.classes) if self.contract.task == "multiclass" else 1


class LabelEncoder:
    """Turns label values into class indices (classification) or floats (regression) per the spec.

    >>> LabelEncoder(LabelSpec(type="binary")).encode(True), LabelEncoder(LabelSpec(type="binary")).encode("0")
    (1, 0)
    >>> LabelEncoder(LabelSpec(type="multiclass", classes=["a", "b", "c"])).encode("c")
    2
    """

    _TRUE = {"1", "true", "yes", "1.0"}
    _FALSE = {"0", "false", "no", "0.0"}

    def __init__(self, spec: LabelSpec) -> None:
        self.spec = spec
        if spec.type == "binary":
            self.classes = [str(c) for c in spec.classes] if spec.classes else ["0", "1"]
        elif spec.type == "multiclass":
            self.classes = [str(c) for c in spec.classes or []]
        else:
            self.classes = []
        self._index = {c: i for i, c in enumerate(self.classes)}

    def encode(self, value: object) -> int | float | None:
        """The class index or target of ``value``; None when it is not a valid label."""
        if self.spec.type == "regression":
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                return None
            return float(value)
        text = str(value).lower() if isinstance(value, bool) else category_text(value)
        if text in self._index:
            return self._index[text]
        if self.spec.type == "binary" and not self.spec.classes:
            if text.lower() in self._TRUE:
                return 1
            if text.lower() in self._FALSE:
                return 0
        return None


def build_table(examples: Sequence[Example], spec: DatasetSpec, *, holdout_fraction: float,
                validation_fraction: float, min_rows: int, max_categories: int) -> Table:
    """Order, split and encode ``examples`` for ``spec``.

    Raises:
        LabelsMissing: no example has a valid label.
        TooFewRows: fewer than ``min_rows`` labelled rows, or a split would be empty.

    """
    encoder = LabelEncoder(spec.label)
    labelled: list[tuple[Example, int | float]] = []
    for ex in sorted(examples, key=lambda e: (e.event_time, e.event_id)):
        y = encoder.encode(ex.label)
        if y is not None:
            labelled.append((ex, y))
    dropped = len(examples) - len(labelled)
    if not labelled:
        raise LabelsMissing(f"none of the {len(examples)} feature events of dataset {spec.name!r} has a valid "
                            "label; send labels (inline or as label events) before retraining")
    if len(labelled) < min_rows:
        raise TooFewRows(f"{len(labelled)} labelled rows in the window, at least {min_rows} are needed; "
                         "widen the window or lower TRAINER_MIN_ROWS")
    n = len(labelled)
    n_holdout = max(1, math.ceil(n * holdout_fraction))
    n_fit = n - n_holdout
    n_validation = max(1, math.ceil(n_fit * validation_fraction))
    n_train = n_fit - n_validation
    if n_train < 1:
        raise TooFewRows(f"{n} labelled rows leave no training rows after the holdout and validation split")
    train, validation, holdout = labelled[:n_train], labelled[n_train:n_fit], labelled[n_fit:]

    numeric = [f.name for f in spec.features if f.type == "numeric"]
    categorical = [CategoricalInput(name=f.name, vocabulary=list(f.categories) if f.categories
                                    else _vocabulary([ex for ex, _ in train], f.name, max_categories))
                   for f in spec.features if f.type == "categorical"]
    classes = encoder.classes
    contract = InputContract(task=spec.label.type, numeric=numeric, categorical=categorical, classes=classes,
                             output=OUTPUT_NAMES[spec.label.type])

    def split(part: list[tuple[Example, int | float]]) -> Split:
        rows = [ex for ex, _ in part]
        dtype = np.float32 if spec.label.type == "regression" else np.int64
        return Split(contract.encode([ex.features for ex in rows]), np.array([y for _, y in part], dtype=dtype),
                     rows)

    train_split = split(train)
    if numeric:
        values = train_split.inputs["numeric"].astype(np.float64)
        with np.errstate(all="ignore"):
            finite = ~np.isnan(values)
            counts = finite.sum(axis=0)
            mean = np.where(counts > 0, np.nansum(values, axis=0) / np.maximum(counts, 1), 0.0)
            var = np.where(counts > 1, np.nansum((values - mean) ** 2, axis=0) / np.maximum(counts - 1, 1), 1.0)
        std = np.sqrt(var)
        std = np.where(std > 1e-12, std, 1.0)
    else:
        mean, std = np.zeros(0), np.ones(0)
    target_mean, target_std = 0.0, 1.0
    if spec.label.type == "regression":
        target = train_split.target.astype(np.float64)
        target_mean = float(target.mean())
        target_std = float(target.std()) if float(target.std()) > 1e-12 else 1.0
    return Table(
        contract=contract,
        preprocessing=Preprocessing(mean.astype(np.float32), std.astype(np.float32), target_mean, target_std),
        train=train_split,
        validation=split(validation),
        holdout=split(holdout),
        dropped_labels=dropped,
    )


def _vocabulary(rows: Sequence[Example], feature: str, limit: int) -> list[str]:
    """Categories seen in ``rows``, most frequent first (ties by name), at most ``limit``."""
    counts = Counter(category_text(r.features[feature]) for r in rows if r.features.get(feature) is not None)
    return [value for value, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]]
