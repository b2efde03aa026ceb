"""The pure statistics against scipy as the oracle, on the same windows."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from drift.stats import BinGrid, CategoryTable, KsGrid, js_distance, psi
from scipy.spatial.distance import jensenshannon
from scipy.stats import chisquare, ks_2samp


@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_drift_ks_equals_scipy_on_sliding_windows(decimals: int | None) -> None:
    rng = np.random.default_rng(7)
    ref = rng.normal(size=700)
    stream = np.concatenate([rng.normal(size=1500), rng.normal(0.3, 1.2, size=1500)])
    if decimals is not None:  # ties in both samples
        ref, stream = np.round(ref, decimals), np.round(stream, decimals)
    grid = KsGrid(ref)
    window = grid.counter()
    buf: deque[float] = deque()
    size, step, checked = 400, 100, 0
    for i, x in enumerate(stream):
        window.add(float(x))
        buf.append(float(x))
        if len(buf) > size:
            window.remove(buf.popleft())
        if len(buf) == size and (i + 1) % step == 0:
            ours = grid.test(window)
            oracle = ks_2samp(ref, np.asarray(buf), method="asymp")
            assert ours.statistic == pytest.approx(oracle.statistic, abs=1e-12)
            assert ours.p_value == pytest.approx(oracle.pvalue, rel=1e-9, abs=1e-15)
            assert ours.statistic == pytest.approx(ks_2samp(ref, np.asarray(buf)).statistic, abs=1e-12)
            checked += 1
    assert checked == 27


def test_drift_ks_vectorised_and_scalar_paths_agree() -> None:
    rng = np.random.default_rng(3)
    ref, win = rng.exponential(size=300), rng.exponential(size=250)
    grid = KsGrid(ref)
    a, b = grid.counter(), grid.counter()
    a.add_many(win)
    for x in win:
        b.add(float(x))
    assert np.array_equal(a.counts, b.counts)
    a.add_many(win[:100], sign=-1)
    assert a.n == 150
    assert grid.statistic(a.counts, a.n) == pytest.approx(ks_2samp(ref, win[100:]).statistic, abs=1e-12)


def test_drift_ks_asymptotic_p_is_close_to_scipys_default() -> None:
    rng = np.random.default_rng(11)
    ref, win = rng.normal(size=1000), rng.normal(0.1, 1, size=500)
    grid = KsGrid(ref)
    w = grid.counter()
    w.add_many(win)
    assert grid.test(w).p_value == pytest.approx(ks_2samp(ref, win).pvalue, abs=0.02)


def test_drift_psi_bins_and_value() -> None:
    rng = np.random.default_rng(5)
    ref = rng.normal(size=5000)
    grid = BinGrid.from_sample(ref, bins=10)
    assert grid.reference == pytest.approx(np.full(10, 0.1), abs=1e-3)
    same, shifted = grid.counter(), grid.counter()
    same.add_many(rng.normal(size=2000))
    shifted.add_many(rng.normal(1.0, 1, size=2000))
    assert grid.psi(same).statistic < 0.02
    assert grid.psi(shifted).statistic > 0.5
    counts = np.bincount(np.searchsorted(grid.edges, rng.normal(size=100), side="right"), minlength=10)
    p, q = counts / counts.sum(), grid.reference
    expected = np.sum((np.maximum(p, 1e-4) - q) * np.log(np.maximum(p, 1e-4) / q))
    assert psi(q, counts) == pytest.approx(expected)


def test_drift_chi2_and_js_equal_scipy() -> None:
    freqs = {"a": 0.5, "b": 0.3, "c": 0.15, "d": 0.05}
    table = CategoryTable(freqs)
    rng = np.random.default_rng(2)
    for v in rng.choice(["a", "b", "c", "d", "new"], p=[0.4, 0.3, 0.2, 0.05, 0.05], size=400):
        table.add(str(v))
    result, obs, exp = table.chi2()
    oracle = chisquare(obs, exp)
    assert result.statistic == pytest.approx(oracle.statistic)
    assert result.p_value == pytest.approx(oracle.pvalue)
    counts = np.append(table.counts, table.new_count).astype(float)
    ref = np.append(table.reference, 0.0)
    assert table.js().statistic == pytest.approx(jensenshannon(ref, counts / counts.sum(), base=2))
    assert table.new_share().statistic == pytest.approx(table.new_count / 400)
    assert js_distance([0.5, 0.5], [0.5, 0.5]) == pytest.approx(0.0)


def test_drift_chi2_accounts_for_the_reference_sample_size() -> None:
    plain, scaled = CategoryTable({"a": 0.5, "b": 0.5}), CategoryTable({"a": 0.5, "b": 0.5}, reference_count=300)
    for v in ["a"] * 70 + ["b"] * 30:
        plain.add(v)
        scaled.add(v)
    assert scaled.chi2()[0].statistic == pytest.approx(plain.chi2()[0].statistic / (1 + 100 / 300))


def test_drift_chi2_pools_rare_categories() -> None:
    table = CategoryTable({"a": 0.6, "b": 0.38, "r1": 0.01, "r2": 0.01})
    for v in ["a"] * 60 + ["b"] * 38 + ["r1", "r2"]:
        table.add(v)
    result, obs, exp = table.chi2()
    assert len(obs) == 2  # r1 + r2 (expected 2) pooled, then folded into the smallest big cell
    assert result.statistic == pytest.approx(chisquare(obs, exp).statistic)


def test_drift_reference_needs_values() -> None:
    with pytest.raises(ValueError, match="finite"):
        KsGrid([float("nan")])
    with pytest.raises(ValueError, match="category"):
        CategoryTable({"a": 0})
