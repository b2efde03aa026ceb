"""Properties of drift's statistics over random samples (reliability plan B3), scipy as the oracle.

For any reference and window (ties, duplicates, single values, far outliers, empty windows):
KS equals ``ks_2samp`` and lies in [0, 1], is 0 for a window equal to the reference, is
symmetric (the window as reference gives the same statistic), and does not depend on the order
the window's values arrived or on adding and removing values (the window is a multiset); PSI is
finite and non-negative even with empty bins, 0 for a window with the reference's shares; the
Jensen-Shannon distance equals scipy's, is symmetric, 0 on itself and within [0, 1].
"""

from __future__ import annotations

import math
import os

import numpy as np
from drift.stats import BinGrid, KsGrid, js_distance, psi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

PROPERTIES = settings(max_examples=int(os.environ.get("TRIBUTARY_PROPERTY_EXAMPLES", "400")), deadline=None,
                      derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
VALUES = st.one_of(st.integers(-5, 5).map(float),                      # ties
                   st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
                   st.sampled_from([-1e300, 1e300, 0.0, -0.0, 5e-324]))
SAMPLES = st.lists(VALUES, min_size=1, max_size=60)


def _window(grid: KsGrid, values: list[float]) -> tuple[np.ndarray, int]:
    window = grid.counter()
    for v in values:
        window.add(v)
    return window.counts.copy(), window.n


@PROPERTIES
@given(reference=SAMPLES, window=SAMPLES, seed=st.integers(0, 2**32 - 1))
def test_ks_is_scipys_bounded_and_blind_to_arrival_order(reference: list[float], window: list[float],
                                                         seed: int) -> None:
    grid = KsGrid(reference)
    counts, n = _window(grid, window)
    d = grid.statistic(counts, n)
    assert 0.0 <= d <= 1.0
    assert math.isclose(d, ks_2samp(reference, window, method="asymp").statistic, abs_tol=1e-12)
    shuffled = list(np.random.default_rng(seed).permutation(window))
    assert grid.statistic(*_window(grid, shuffled)) == d
    # The window as reference: the statistic is symmetric.
    assert math.isclose(KsGrid(window).statistic(*_window(KsGrid(window), reference)), d, abs_tol=1e-12)


@PROPERTIES
@given(reference=SAMPLES, window=SAMPLES, passing=SAMPLES)
def test_ks_of_a_sliding_window_depends_only_on_what_is_in_it(reference: list[float], window: list[float],
                                                               passing: list[float]) -> None:
    """Values that entered and left again (a sliding window) leave no trace; an empty window is 0."""
    grid = KsGrid(reference)
    counter = grid.counter()
    for v in passing:
        counter.add(v)
    counter.add_many(window)
    for v in passing:
        counter.remove(v)
    assert grid.statistic(counter.counts, counter.n) == grid.statistic(*_window(grid, window))
    counter.add_many(window, sign=-1)
    assert counter.n == 0 and not counter.counts.any()
    assert grid.statistic(counter.counts, counter.n) == 0.0


@PROPERTIES
@given(reference=SAMPLES)
def test_ks_of_the_reference_itself_is_zero(reference: list[float]) -> None:
    grid = KsGrid(reference)
    assert grid.statistic(*_window(grid, reference)) == 0.0


@PROPERTIES
@given(reference=st.lists(VALUES, min_size=1, max_size=200), window=st.lists(VALUES, max_size=60),
       bins=st.integers(1, 12))
def test_psi_is_finite_and_non_negative_with_empty_bins(reference: list[float], window: list[float],
                                                        bins: int) -> None:
    grid = BinGrid.from_sample(reference, bins=bins)
    counter = grid.counter()
    counter.add_many(window)
    result = grid.psi(counter)
    assert math.isfinite(result.statistic) and result.statistic >= 0.0
    if not window:
        assert result.statistic == 0.0
    # A window with exactly the reference's counts per bin has PSI 0.
    own = grid.counter()
    own.add_many(reference)
    assert grid.psi(own).statistic == 0.0 or math.isclose(grid.psi(own).statistic, 0.0, abs_tol=1e-12)


@PROPERTIES
@given(counts=st.lists(st.integers(0, 1000), min_size=1, max_size=10), scale=st.integers(1, 50))
def test_psi_of_the_same_shares_is_zero_whatever_the_window_size(counts: list[int], scale: int) -> None:
    if sum(counts) == 0:
        return
    shares = np.asarray(counts, dtype=np.float64) / sum(counts)
    assert math.isclose(psi(shares, [c * scale for c in counts]), 0.0, abs_tol=1e-12)


PROBABILITIES = st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=12)


@PROPERTIES
@given(p=PROBABILITIES, q=PROBABILITIES)
def test_js_distance_is_scipys_symmetric_and_bounded(p: list[float], q: list[float]) -> None:
    size = max(len(p), len(q))
    p, q = p + [0.0] * (size - len(p)), q + [0.0] * (size - len(q))
    if sum(p) == 0 or sum(q) == 0:
        return
    d = js_distance(p, q)
    assert 0.0 <= d <= 1.0 + 1e-12
    assert math.isclose(d, js_distance(q, p), abs_tol=1e-12)
    assert math.isclose(d, float(jensenshannon(p, q, base=2)), abs_tol=1e-9)
    assert math.isclose(js_distance(p, p), 0.0, abs_tol=1e-7)
