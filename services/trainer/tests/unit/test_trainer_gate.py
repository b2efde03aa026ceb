"""Metrics against brute force, and the promotion gate accepting and refusing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from trainer.evaluation import Evaluation, SliceMetrics, auc, evaluate, evaluate_arrays
from trainer.gate import GateRules, decide

RULES = GateRules(metrics=["auc", "f1", "accuracy"], margin=0.01, slice_margin=0.02, min_slice_rows=100)


def brute_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_matches_the_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, 60)
        s = np.round(rng.random(60), 1)  # many ties
        if 0 < y.sum() < 60:
            assert auc(y, s) == pytest.approx(brute_auc(y, s))
    assert auc(np.ones(5), np.arange(5.0)) is None


def test_classification_and_regression_metrics() -> None:
    y = np.array([0, 1, 1, 0])
    got = evaluate_arrays("binary", y, np.array([0.2, 0.9, 0.4, 0.6]))
    assert got == {"auc": 0.75, "f1": 0.5, "accuracy": 0.5}
    reg = evaluate_arrays("regression", np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    assert reg == {"rmse": pytest.approx(np.sqrt(4 / 3)), "mae": pytest.approx(2 / 3)}
    multi = evaluate_arrays("multiclass", np.array([0, 1, 2]), np.eye(3))
    assert multi == {"auc": 1.0, "f1": 1.0, "accuracy": 1.0}


def test_per_slice_metrics() -> None:
    y = np.array([0, 1, 0, 1])
    ev = evaluate("binary", y, np.array([0.1, 0.9, 0.8, 0.2]), {"region": np.array(["n", "n", "s", "s"], dtype=object)})
    assert ev.slice("region", "n") == SliceMetrics("region", "n", 2, {"auc": 1.0, "f1": 1.0, "accuracy": 1.0})
    assert ev.slice("region", "s").metrics["auc"] == 0.0  # type: ignore[union-attr]


def _eval(overall: float, north: float, north_rows: int = 500) -> Evaluation:
    m = {"auc": overall, "f1": overall, "accuracy": overall}
    return Evaluation(1000, m, [SliceMetrics("region", "north", north_rows, {"auc": north, "f1": north,
                                                                           "accuracy": north})])


def test_gate_accepts_a_candidate_within_the_margins() -> None:
    result = decide(_eval(0.795, 0.785), _eval(0.80, 0.80), RULES, champion_version=3)
    assert result.passed
    assert result.reasons == ["not worse than champion v3 by more than 0.01 overall and 0.02 on every slice with "
                              "at least 100 rows"]
    assert all(c.passed for c in result.checks) and len(result.checks) == 6


def test_gate_refuses_overall_and_per_slice() -> None:
    overall = decide(_eval(0.78, 0.80), _eval(0.80, 0.80), RULES)
    assert not overall.passed and overall.reasons[0].startswith("auc overall: 0.7800 is worse")
    on_slice = decide(_eval(0.80, 0.70), _eval(0.80, 0.80), RULES)
    assert not on_slice.passed
    assert on_slice.reasons[0].startswith("auc on region=north (500 rows): 0.7000 is worse")
    failed = [c for c in on_slice.checks if not c.passed]
    assert {(c.metric, c.feature, c.value, c.allowed) for c in failed} == {
        (m, "region", "north", 0.78) for m in ("auc", "f1", "accuracy")}


def test_small_slices_are_reported_but_not_gated() -> None:
    result = decide(_eval(0.80, 0.10, north_rows=50), _eval(0.80, 0.90, north_rows=50), RULES)
    assert result.passed
    assert any("fewer than 100 rows" in c.note for c in result.checks)


def test_without_a_champion_the_candidate_passes_and_error_metrics_use_a_relative_margin() -> None:
    assert decide(_eval(0.5, 0.5), None, RULES).passed
    rules = GateRules(metrics=["rmse"], margin=0.05, slice_margin=0.05, min_slice_rows=1)
    assert decide(Evaluation(10, {"rmse": 2.09}), Evaluation(10, {"rmse": 2.0}), rules).passed
    refused = decide(Evaluation(10, {"rmse": 2.2}), Evaluation(10, {"rmse": 2.0}), rules)
    assert not refused.passed and refused.checks[0].allowed == pytest.approx(2.1)
