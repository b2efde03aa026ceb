"""Holdout metrics in numpy, overall and per slice of every categorical feature.

AUC, F1 and accuracy for classification; RMSE and MAE for regression.
Scores are the model's outputs: P(classes[1]) for binary labels (threshold 0.5 for F1 and
accuracy), one probability per class for multiclass labels (macro one-vs-rest AUC, macro F1),
the predicted target for regression.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from trainer.contract import Task

HIGHER_IS_BETTER = {"auc": True, "f1": True, "accuracy": True, "rmse": False, "mae": False}
TASK_METRICS: dict[str, list[str]] = {"binary": ["auc", "f1", "accuracy"], "multiclass": ["auc", "f1", "accuracy"],
                                      "regression": ["rmse", "mae"]}


@dataclass(frozen=True, slots=True)
class SliceMetrics:
    """Metrics of the rows whose ``feature`` equals ``value``."""

    feature: str
    value: str
    rows: int
    metrics: dict[str, float]


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Metrics of one model on one holdout: overall and per slice. An undefined metric is absent."""

    rows: int
    metrics: dict[str, float]
    slices: list[SliceMetrics] = field(default_factory=list)

    def slice(self, feature: str, value: str) -> SliceMetrics | None:
        """The metrics of one slice, or None when the holdout has no such rows."""
        for s in self.slices:
            if s.feature == feature and s.value == value:
                return s
        return None


def auc(y: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve of binary ``y`` (0/1) by ``score``, ties counted half; None with one class.

    >>> auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    """
    y = y.astype(bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    sorted_scores = score[order]
    ranks = np.empty(len(score), dtype=np.float64)
    # Average ranks over ties (1-based).
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[y].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def f1(y: np.ndarray, predicted: np.ndarray) -> float:
    """F1 of the positive class (1) of binary labels.

    >>> f1(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0]))
    0.5
    """
    tp = float(np.sum((predicted == 1) & (y == 1)))
    fp = float(np.sum((predicted == 1) & (y == 0)))
    fn = float(np.sum((predicted == 0) & (y == 1)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def evaluate_arrays(task: Task, y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """The task's metrics of ``scores`` against ``y``; undefined ones (AUC of one class) are left out."""
    out: dict[str, float] = {}
    if len(y) == 0:
        return out
    if task == "regression":
        predicted = scores.reshape(-1).astype(np.float64)
        error = predicted - y.astype(np.float64)
        out["rmse"] = float(np.sqrt(np.mean(error**2)))
        out["mae"] = float(np.mean(np.abs(error)))
        return out
    if task == "binary":
        probability = scores.reshape(-1).astype(np.float64)
        predicted = (probability >= 0.5).astype(np.int64)
        value = auc(y, probability)
        if value is not None:
            out["auc"] = value
        out["f1"] = f1(y, predicted)
        out["accuracy"] = float(np.mean(predicted == y))
        return out
    probabilities = scores.astype(np.float64)
    predicted = probabilities.argmax(axis=1)
    aucs = [auc((y == c).astype(np.int64), probabilities[:, c]) for c in range(probabilities.shape[1])]
    defined = [a for a in aucs if a is not None]
    if defined:
        out["auc"] = float(np.mean(defined))
    present = [c for c in range(probabilities.shape[1]) if np.any(y == c) or np.any(predicted == c)]
    out["f1"] = float(np.mean([f1((y == c).astype(np.int64), (predicted == c).astype(np.int64)) for c in present]))
    out["accuracy"] = float(np.mean(predicted == y))
    return out


def evaluate(task: Task, y: np.ndarray, scores: np.ndarray, slices: Mapping[str, np.ndarray]) -> Evaluation:
    """Overall metrics plus the metrics of every value of every slicing feature.

    Args:
        task: the label's type.
        y: class indices or targets.
        scores: the model's outputs, one row per example.
        slices: per categorical feature, the raw category of each row.

    """
    per_slice: list[SliceMetrics] = []
    for feature in sorted(slices):
        values = slices[feature]
        for value in sorted(set(values.tolist())):
            mask = values == value
            per_slice.append(SliceMetrics(feature, str(value), int(mask.sum()),
                                          evaluate_arrays(task, y[mask], scores[mask])))
    return Evaluation(rows=len(y), metrics=evaluate_arrays(task, y, scores), slices=per_slice)
