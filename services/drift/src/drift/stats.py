"""Incremental windowed statistics: two-sample KS, PSI, chi-squared and Jensen-Shannon.

Everything here is pure numpy (scipy only for the KS and chi-squared tail probabilities). The
reference side of every test is fixed while a window slides, so each test keeps the window as
*counts over cells fixed by the reference* and updates them one value at a time; evaluating a
window is then ``O(cells)`` instead of sorting both samples again as ``scipy.stats.ks_2samp``
does. The KS grid interleaves the distinct reference values with the gaps between them, which
is enough to find the exact supremum of ``|F_ref - F_win|`` (see :class:`KsGrid`), so the
statistic is the same number ``ks_2samp`` computes on the same two samples.

Examples:
    >>> grid = KsGrid([1.0, 2.0, 3.0, 4.0])
    >>> window = grid.counter()
    >>> window.add_many([2.5, 3.5, 4.5, 5.5])
    >>> round(grid.statistic(window.counts, window.n), 6)
    0.5

"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.stats import chi2 as _chi2
from scipy.stats import kstwo as _kstwo

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

PSI_EPSILON = 1e-4
"""Floor of a bin's share in PSI, so an empty bin gives a large but finite term."""


@dataclass(frozen=True, slots=True)
class TestResult:
    """One statistic over one window, with its p-value when the test has one."""

    statistic: float
    p_value: float | None
    sample_size: int


class WindowCounter:
    """Counts of a window's values over the cells of one reference grid; add and remove in O(log cells)."""

    __slots__ = ("_cell", "counts", "n")

    def __init__(self, size: int, cell: _CellFn) -> None:
        self.counts: IntArray = np.zeros(size, dtype=np.int64)
        self.n = 0
        self._cell = cell

    def add(self, value: float) -> None:
        """Count one value into the window."""
        self.counts[self._cell(value)] += 1
        self.n += 1

    def remove(self, value: float) -> None:
        """Take one value (that was added before) out of the window."""
        self.counts[self._cell(value)] -= 1
        self.n -= 1

    def add_many(self, values: Sequence[float] | FloatArray, sign: int = 1) -> None:
        """Add (``sign=1``) or remove (``sign=-1``) many values at once (vectorised)."""
        arr = np.asarray(values, dtype=np.float64)
        if arr.size == 0:
            return
        cells = self._cell.many(arr)
        self.counts += sign * np.bincount(cells, minlength=self.counts.size)
        self.n += sign * int(arr.size)


class _CellFn:
    """Maps values to cell indices of a grid (one value with bisect, or many vectorised)."""

    __slots__ = ("_edges", "_list", "_mode")

    def __init__(self, edges: FloatArray, mode: str) -> None:
        self._edges = edges
        self._list = edges.tolist()
        self._mode = mode

    def __call__(self, value: float) -> int:
        if self._mode == "ks":
            left = bisect_left(self._list, value)
            return 2 * left + (left < len(self._list) and self._list[left] == value)
        return bisect_right(self._list, value)

    def many(self, values: FloatArray) -> IntArray:
        if self._mode == "ks":
            u = self._edges
            left = np.searchsorted(u, values, side="left")
            at = np.minimum(left, u.size - 1)
            equal = (left < u.size) & (u[at] == values)
            cells: IntArray = (2 * left + equal).astype(np.int64)
            return cells
        bins: IntArray = np.searchsorted(self._edges, values, side="right").astype(np.int64)
        return bins


class KsGrid:
    """The reference sample of a two-sample KS test, prepared once for any number of windows.

    Cells: ``2j+1`` holds window values equal to the j-th distinct reference value ``u_j``,
    ``2j`` holds values strictly between ``u_(j-1)`` and ``u_j`` (cell 0: below ``u_0``, cell
    ``2K``: above the last). With ``C`` the cumulative window counts and ``R_j = F_ref(u_j)``,
    ``F_ref`` is constant between reference values while ``F_win`` only rises, so the
    supremum of ``|F_ref - F_win|`` is at a segment end: ``|R_j - C[2j+1]/m|`` (at ``u_j``) or
    ``|R_(j-1) - C[2j]/m|`` (just below ``u_j``). That is exactly ``ks_2samp``'s statistic.

    Args:
        reference: the reference sample (any order, ties allowed; NaNs are dropped).

    Raises:
        ValueError: the reference has no finite value.

    """

    def __init__(self, reference: Sequence[float] | FloatArray) -> None:
        ref = np.asarray(reference, dtype=np.float64)
        ref = ref[np.isfinite(ref)]
        if ref.size == 0:
            raise ValueError("a KS reference needs at least one finite value")
        values, counts = np.unique(ref, return_counts=True)
        self.values: FloatArray = values
        self.n_reference = int(ref.size)
        cdf = np.cumsum(counts) / ref.size
        self._at: FloatArray = cdf                                    # R_j
        self._below: FloatArray = np.concatenate(([0.0], cdf[:-1]))   # R_(j-1)
        self._cell = _CellFn(values, "ks")

    @property
    def cells(self) -> int:
        """Number of cells of a window counter (2K+1)."""
        return 2 * self.values.size + 1

    def counter(self) -> WindowCounter:
        """An empty window over this grid."""
        return WindowCounter(self.cells, self._cell)

    def statistic(self, counts: IntArray, n: int) -> float:
        """The KS statistic ``D`` of a window given as cell counts."""
        if n <= 0:
            return 0.0
        cum = np.cumsum(counts) / n
        at = np.abs(self._at - cum[1::2])
        below = np.abs(self._below - cum[0:-1:2])
        return float(max(at.max(), below.max()))

    def test(self, window: WindowCounter) -> TestResult:
        """KS statistic and two-sided asymptotic p-value of ``window`` against the reference."""
        d = self.statistic(window.counts, window.n)
        return TestResult(d, ks_p_value(d, self.n_reference, window.n), window.n)


def ks_p_value(d: float, n1: int, n2: int) -> float:
    """Two-sided p-value of a two-sample KS statistic, as ``ks_2samp(..., method="asymp")``.

    scipy evaluates the one-sample KS distribution (``kstwo``) at the effective size
    ``round(n1*n2/(n1+n2))``; the same formula is used here so both give the same number.
    """
    return ks_p_values([(d, n1, n2)])[0]


def ks_p_values(tests: Sequence[tuple[float, int, int]]) -> list[float]:
    """:func:`ks_p_value` of many ``(d, n1, n2)`` at once (one window's features).

    ``D`` is ``|i/n1 - j/n2| = k/(n1*n2)`` for an integer ``k``, so ``(k, n1, n2)`` names it
    exactly and the tail probability (~0.1 ms) is computed once per distinct value
    (:data:`KS_P_VALUES`). The values not known yet are computed in one vectorised ``kstwo.sf``
    call per effective size: the distribution's argument handling (most of a scalar call's
    cost) is then paid once per window instead of once per feature.
    """
    out: list[float] = [1.0] * len(tests)
    missing: dict[tuple[int, int, int], list[int]] = {}
    for i, (d, n1, n2) in enumerate(tests):
        if n1 <= 0 or n2 <= 0:
            continue
        key = (round(d * n1 * n2), n1, n2)
        known = KS_P_VALUES.get(key)
        if known is None:
            missing.setdefault(key, []).append(i)
        else:
            out[i] = known
    by_size: dict[int, list[tuple[int, int, int]]] = {}
    for key in missing:
        _, n1, n2 = key
        by_size.setdefault(int(np.round(n1 * n2 / (n1 + n2))), []).append(key)
    for size, keys in by_size.items():
        x = np.asarray([k / (n1 * n2) for k, n1, n2 in keys], dtype=np.float64)
        probs = np.clip(_kstwo.sf(x, size), 0.0, 1.0)
        if len(KS_P_VALUES) + len(keys) > KS_P_VALUES_MAX:
            KS_P_VALUES.clear()
        for key, p in zip(keys, probs.tolist(), strict=True):
            KS_P_VALUES[key] = p
            for i in missing[key]:
                out[i] = p
    return out


KS_P_VALUES: dict[tuple[int, int, int], float] = {}
"""Memo of KS p-values by ``(k, n1, n2)`` (cleared when it reaches :data:`KS_P_VALUES_MAX`)."""
KS_P_VALUES_MAX = 1 << 16


class BinGrid:
    """Fixed bins (from the reference) with the reference's share per bin, for PSI.

    ``edges`` are the inner edges: bin ``i`` holds values in ``[edges[i-1], edges[i])``, the
    first bin everything below ``edges[0]`` and the last everything from ``edges[-1]`` on.

    Examples:
        >>> grid = BinGrid.from_sample([0.0, 1.0, 2.0, 3.0], bins=2)
        >>> grid.edges.tolist(), grid.reference.tolist()
        ([1.5], [0.5, 0.5])

    """

    def __init__(self, edges: Sequence[float] | FloatArray, reference: Sequence[float] | FloatArray) -> None:
        self.edges: FloatArray = np.asarray(edges, dtype=np.float64)
        ref = np.asarray(reference, dtype=np.float64)
        if ref.size != self.edges.size + 1:
            raise ValueError(f"{self.edges.size} inner edges need {self.edges.size + 1} reference shares, "
                             f"got {ref.size}")
        total = ref.sum()
        if not np.isfinite(total) or total <= 0:
            raise ValueError("reference shares must be finite and sum to more than 0")
        self.reference: FloatArray = ref / total
        self._cell = _CellFn(self.edges, "bins")

    @classmethod
    def from_sample(cls, sample: Sequence[float] | FloatArray, *, bins: int = 10) -> BinGrid:
        """Quantile bins of ``sample`` (ties merged) and the sample's own share per bin."""
        arr = np.asarray(sample, dtype=np.float64)
        arr = arr[np.isfinite(arr)]
        if arr.size == 0:
            raise ValueError("a PSI reference needs at least one finite value")
        inner = np.unique(np.quantile(arr, np.linspace(0, 1, bins + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(inner, arr, side="right"), minlength=inner.size + 1)
        return cls(inner, counts.astype(np.float64))

    def counter(self) -> WindowCounter:
        """An empty window over these bins."""
        return WindowCounter(self.edges.size + 1, self._cell)

    def psi(self, window: WindowCounter) -> TestResult:
        """Population stability index of ``window`` against the reference shares."""
        return TestResult(psi(self.reference, window.counts), None, window.n)


def psi(reference: FloatArray | Sequence[float], counts: IntArray | Sequence[float]) -> float:
    """PSI between reference shares and observed counts: ``sum((p - q) * ln(p / q))``.

    Shares are floored at :data:`PSI_EPSILON` so empty bins give large but finite values.

    Examples:
        >>> psi([0.5, 0.5], [50, 50])
        0.0

    """
    q = np.maximum(np.asarray(reference, dtype=np.float64), PSI_EPSILON)
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        return 0.0
    p = np.maximum(c / total, PSI_EPSILON)
    return float(np.sum((p - q) * np.log(p / q)))


class CategoryTable:
    """Reference frequencies of a categorical feature and the window's counts per category.

    Categories unseen in the reference are counted apart (``new_count``): chi-squared runs on
    the known categories only (it has no expectation for a new one), Jensen-Shannon includes
    them (with reference share 0), and their share is its own test.
    """

    def __init__(self, frequencies: Mapping[str, float], *, reference_count: int = 0) -> None:
        self.reference_count = reference_count
        items = [(str(k), float(v)) for k, v in frequencies.items() if float(v) > 0]
        if not items:
            raise ValueError("a categorical reference needs at least one category with a positive frequency")
        self.categories = [k for k, _ in items]
        self._index = {k: i for i, k in enumerate(self.categories)}
        probs = np.asarray([v for _, v in items], dtype=np.float64)
        self.reference: FloatArray = probs / probs.sum()
        self.counts: IntArray = np.zeros(len(items), dtype=np.int64)
        self.new: dict[str, int] = {}

    @property
    def n(self) -> int:
        """Values in the window, new categories included."""
        return int(self.counts.sum()) + sum(self.new.values())

    @property
    def new_count(self) -> int:
        """Values in the window whose category the reference does not know."""
        return sum(self.new.values())

    def add(self, value: str, sign: int = 1) -> None:
        """Count (``sign=1``) or uncount (``sign=-1``) one value."""
        i = self._index.get(value)
        if i is not None:
            self.counts[i] += sign
            return
        left = self.new.get(value, 0) + sign
        if left > 0:
            self.new[value] = left
        else:
            self.new.pop(value, None)

    def chi2(self, *, min_expected: float = 5.0) -> tuple[TestResult, IntArray, FloatArray]:
        """Chi-squared goodness of fit of the known-category counts to the reference.

        Cells whose expected count is below ``min_expected`` are pooled into one cell (when
        the pool itself is big enough), as the chi-squared approximation needs. When the
        reference frequencies come from ``reference_count`` values (not from the population),
        the statistic is divided by ``1 + m / reference_count``: the reference's own sampling
        noise inflates the goodness-of-fit statistic by that factor, and without the
        correction a fixed reference raises the false-alarm rate above the level. Returns the
        result and the observed and expected arrays actually tested (for the oracle tests).
        """
        observed = self.counts.astype(np.float64)
        m = float(observed.sum())
        if m <= 0:
            return TestResult(0.0, 1.0, 0), np.zeros(0, np.int64), np.zeros(0)
        expected = self.reference * m
        small = expected < min_expected
        if small.any():
            obs = np.concatenate((observed[~small], [observed[small].sum()]))
            exp = np.concatenate((expected[~small], [expected[small].sum()]))
            if exp[-1] < min_expected and exp.size > 1:   # pool still too small: fold into the smallest big cell
                j = int(np.argmin(exp[:-1]))
                obs[j] += obs[-1]
                exp[j] += exp[-1]
                obs, exp = obs[:-1], exp[:-1]
        else:
            obs, exp = observed, expected
        if obs.size < 2:
            return TestResult(0.0, 1.0, int(m)), obs.astype(np.int64), exp
        stat = float(np.sum((obs - exp) ** 2 / exp))
        if self.reference_count > 0:
            stat /= 1 + m / self.reference_count
        p = float(_chi2.sf(stat, obs.size - 1))
        return TestResult(stat, p, int(m)), obs.astype(np.int64), exp

    def js(self) -> TestResult:
        """Jensen-Shannon distance (base 2, in [0, 1]) of the window's shares to the reference's."""
        counts = np.concatenate((self.counts.astype(np.float64), np.asarray(list(self.new.values()), np.float64)))
        total = counts.sum()
        if total <= 0:
            return TestResult(0.0, None, 0)
        ref = np.concatenate((self.reference, np.zeros(len(self.new))))
        return TestResult(js_distance(ref, counts / total), None, int(total))

    def new_share(self) -> TestResult:
        """Share of the window's values in categories the reference does not know."""
        n = self.n
        return TestResult(self.new_count / n if n else 0.0, None, n)


def js_distance(p: FloatArray | Sequence[float], q: FloatArray | Sequence[float]) -> float:
    """Jensen-Shannon distance (square root of the divergence, base 2) between two distributions.

    Examples:
        >>> js_distance([1.0, 0.0], [0.0, 1.0])
        1.0

    """
    a = np.asarray(p, dtype=np.float64)
    b = np.asarray(q, dtype=np.float64)
    a = a / a.sum()
    b = b / b.sum()
    m = (a + b) / 2

    def kl(x: FloatArray) -> float:
        mask = x > 0
        return float(np.sum(x[mask] * np.log2(x[mask] / m[mask])))

    return math.sqrt(max(0.0, (kl(a) + kl(b)) / 2))


def frequencies(values: Iterable[str]) -> dict[str, float]:
    """Relative frequency of every value (for building a categorical reference from a sample)."""
    counts: dict[str, int] = {}
    n = 0
    for v in values:
        counts[v] = counts.get(v, 0) + 1
        n += 1
    return {k: c / n for k, c in counts.items()} if n else {}

