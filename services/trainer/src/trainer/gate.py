"""The promotion gate: the candidate may not be worse than the champion, overall and on any slice.

Rules (the same numbers are in every decision record):

* Compared metrics: AUC, F1, accuracy (classification, higher is better) or RMSE, MAE
  (regression, lower is better), or the configured subset.
* Overall, the candidate may be worse than the champion by at most ``margin``: absolutely for
  the classification metrics (``candidate >= champion - margin``), relatively for the error
  metrics (``candidate <= champion * (1 + margin)``).
* On each slice (a category of a categorical feature) with at least ``min_slice_rows`` holdout
  rows, the same test with ``slice_margin``. Smaller slices, and metrics undefined on a slice
  (AUC of a one-class slice), are recorded but not gated.
* Without a champion the candidate is promoted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from schemas.training import SliceCheck

from trainer.evaluation import HIGHER_IS_BETTER, Evaluation


@dataclass(frozen=True, slots=True)
class GateRules:
    """The gate's thresholds."""

    metrics: Sequence[str]
    margin: float
    slice_margin: float
    min_slice_rows: int


@dataclass(frozen=True, slots=True)
class GateResult:
    """The verdict, why, and every comparison made."""

    passed: bool
    reasons: list[str]
    checks: list[SliceCheck]


def allowed_value(metric: str, champion: float, margin: float) -> float:
    """The worst candidate value that still passes against ``champion``.

    >>> allowed_value("auc", 0.8, 0.01), allowed_value("rmse", 2.0, 0.05)
    (0.79, 2.1)
    """
    if HIGHER_IS_BETTER[metric]:
        return round(champion - margin, 12)
    return round(champion * (1 + margin), 12)


def _passes(metric: str, candidate: float, allowed: float) -> bool:
    return candidate >= allowed if HIGHER_IS_BETTER[metric] else candidate <= allowed


def decide(candidate: Evaluation, champion: Evaluation | None, rules: GateRules,
           champion_version: int | None = None) -> GateResult:
    """Compare ``candidate`` with ``champion`` (both on the same holdout) under ``rules``.

    >>> from trainer.evaluation import Evaluation
    >>> rules = GateRules(metrics=["auc"], margin=0.01, slice_margin=0.02, min_slice_rows=10)
    >>> decide(Evaluation(100, {"auc": 0.795}), Evaluation(100, {"auc": 0.80}), rules).passed
    True
    >>> decide(Evaluation(100, {"auc": 0.70}), Evaluation(100, {"auc": 0.80}), rules).reasons
    ['auc overall: 0.7000 is worse than the champion (0.8000) by more than the margin 0.01']
    """
    checks: list[SliceCheck] = []
    if champion is None:
        for metric in rules.metrics:
            if metric in candidate.metrics:
                checks.append(SliceCheck(metric=metric, rows=candidate.rows, candidate=candidate.metrics[metric],
                                         passed=True, note="no champion"))
        return GateResult(True, ["no champion to compare with: the first model is promoted"], checks)
    failures: list[str] = []
    for metric in rules.metrics:
        c, h = candidate.metrics.get(metric), champion.metrics.get(metric)
        if c is None or h is None:
            checks.append(SliceCheck(metric=metric, rows=candidate.rows, candidate=c, champion=h, passed=True,
                                     note="undefined on this holdout: not gated"))
            continue
        allowed = allowed_value(metric, h, rules.margin)
        ok = _passes(metric, c, allowed)
        checks.append(SliceCheck(metric=metric, rows=candidate.rows, candidate=c, champion=h, allowed=allowed,
                                 passed=ok))
        if not ok:
            failures.append(f"{metric} overall: {c:.4f} is worse than the champion ({h:.4f}) by more than the "
                            f"margin {rules.margin:g}")
    for cand_slice in candidate.slices:
        champ_slice = champion.slice(cand_slice.feature, cand_slice.value)
        gated = cand_slice.rows >= rules.min_slice_rows
        for metric in rules.metrics:
            c = cand_slice.metrics.get(metric)
            h = champ_slice.metrics.get(metric) if champ_slice else None
            base = {"metric": metric, "feature": cand_slice.feature, "value": cand_slice.value,
                    "rows": cand_slice.rows, "candidate": c, "champion": h}
            if not gated:
                checks.append(SliceCheck(**base, passed=True,
                                         note=f"fewer than {rules.min_slice_rows} rows: not gated"))
                continue
            if c is None or h is None:
                checks.append(SliceCheck(**base, passed=True, note="undefined on this slice: not gated"))
                continue
            allowed = allowed_value(metric, h, rules.slice_margin)
            ok = _passes(metric, c, allowed)
            checks.append(SliceCheck(**base, allowed=allowed, passed=ok))
            if not ok:
                failures.append(f"{metric} on {cand_slice.feature}={cand_slice.value} ({cand_slice.rows} rows): "
                                f"{c:.4f} is worse than the champion ({h:.4f}) by more than the slice margin "
                                f"{rules.slice_margin:g}")
    if failures:
        return GateResult(False, failures, checks)
    against = f"champion v{champion_version}" if champion_version else "the champion"
    return GateResult(True, [f"not worse than {against} by more than {rules.margin:g} overall and "
                             f"{rules.slice_margin:g} on every slice with at least {rules.min_slice_rows} rows"],
                      checks)
