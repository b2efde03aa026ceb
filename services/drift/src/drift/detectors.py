"""Online concept-drift detectors behind our own small interface; the only module that imports river.

river changed what ``update()`` returns twice (0.12, 0.21), so callers never touch river
objects: they call :meth:`Detector.update` and read :attr:`Detector.drift_detected`, which is
per update (it is true only for the update that detected the change). The detectors' learned
state is not serialised (no pickles of third-party objects in our changelog); the stream keeps
the values fed since the last reset instead and :func:`replayed` rebuilds a detector from
them, which gives the same state because both detectors are deterministic in their input.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from river import drift as _river_drift


class Detector(Protocol):
    """A detector of a change in the mean of a scalar stream."""

    name: str

    def update(self, x: float) -> None:
        """Feed one value."""

    @property
    def drift_detected(self) -> bool:
        """True when the last update detected a change."""

    @property
    def estimation(self) -> float:
        """The detector's current estimate of the stream's mean."""


class Adwin:
    """ADWIN (adaptive windowing) over a scalar stream.

    Examples:
        >>> d = Adwin(delta=0.002)
        >>> hits = []
        >>> for i, x in enumerate([0.0] * 500 + [1.0] * 500):
        ...     d.update(x)
        ...     if d.drift_detected:
        ...         hits.append(i)
        >>> bool(hits) and hits[0] >= 500
        True

    """

    name = "adwin"

    def __init__(self, delta: float = 0.002) -> None:
        self.delta = delta
        self._adwin = _river_drift.ADWIN(delta=delta)  # type: ignore[no-untyped-call]

    def update(self, x: float) -> None:
        """Feed one value."""
        self._adwin.update(x)  # type: ignore[no-untyped-call]

    @property
    def drift_detected(self) -> bool:
        """True when the last update shrank the window (a change in the mean)."""
        return bool(self._adwin.drift_detected)

    @property
    def estimation(self) -> float:
        """Mean of ADWIN's current window."""
        return float(self._adwin.estimation)


class PageHinkley:
    """Page-Hinkley test for a change in the mean (both directions by default).

    Examples:
        >>> d = PageHinkley(threshold=10.0)
        >>> hits = [i for i, x in enumerate([0.0] * 300 + [1.0] * 300) if (d.update(x), d.drift_detected)[1]]
        >>> bool(hits) and hits[0] >= 300
        True

    """

    name = "page_hinkley"

    def __init__(self, *, min_instances: int = 30, delta: float = 0.005, threshold: float = 50.0,
                 alpha: float = 1 - 0.0001) -> None:
        self.min_instances = min_instances
        self.delta = delta
        self.threshold = threshold
        self.alpha = alpha
        self._ph = _river_drift.PageHinkley(min_instances=min_instances, delta=delta, threshold=threshold,
                                            alpha=alpha)
        self._sum = 0.0
        self._n = 0

    def update(self, x: float) -> None:
        """Feed one value."""
        self._ph.update(x)  # type: ignore[no-untyped-call]
        if self._ph.drift_detected:
            self._sum, self._n = 0.0, 0
        else:
            self._sum += x
            self._n += 1

    @property
    def drift_detected(self) -> bool:
        """True when the last update crossed the threshold."""
        return bool(self._ph.drift_detected)

    @property
    def estimation(self) -> float:
        """Mean of the values since the last detection."""
        return self._sum / self._n if self._n else 0.0


def replayed(detector: Detector, values: Iterable[float]) -> Detector:
    """``detector`` after feeding it ``values`` (used to restore state after a restart)."""
    for x in values:
        detector.update(x)
    return detector
