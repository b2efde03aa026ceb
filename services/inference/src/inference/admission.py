"""How many requests the gateway serves at once: a fixed limit, or one that adapts to answer times.

A fixed ``INFERENCE_MAX_INFLIGHT`` has to be chosen for one load. Set high, an overload is admitted
at a concurrency where requests queue behind each other in Triton and in the gateway's event loop
(reliability G4 at three times the sustainable rate: with a limit of 8, admitted p99 24.6 ms against
2.5 ms at light load; with 4, 7.7 ms). Set low, a burst at a rate the system sustains is refused.

:class:`AdaptiveLimit` moves the limit between 1 and the configured maximum with the gradient rule of
Netflix's concurrency-limits library and Envoy's adaptive concurrency filter: after every window of
answers it compares the window's mean answer time with the best window seen lately, and

    gradient = clamp(tolerance * best / mean, 0.5, 1.0)
    limit    = clamp(limit * gradient + 1, 1, maximum)

so the limit shrinks (at most by half a window) while answers are slower than ``tolerance`` times the
best, and grows by one a window while they are not. "Lately" is the last one to two ``epoch_s``: the
best window of the current and the previous epoch, so that a model that became slower for good
(a new version) raises the reference within two epochs instead of being throttled for ever.

One limit covers every model the gateway serves: traffic moving to a slower model reads as slower
answers, and the limit stays lower until the reference catches up (one to two epochs).

It is transport-agnostic: the core asks :meth:`current` before admitting a request and reports each
admitted request's answer time (and each backend failure's time) with :meth:`record`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from inference import metrics


class AdaptiveLimit:
    """A concurrency limit following the admitted requests' answer times (module docstring).

    Args:
        maximum: the highest limit (``INFERENCE_MAX_INFLIGHT``); the limit starts there.
        tolerance: how much slower than the best recent window a window may be before the limit shrinks.
        window: answers per window.
        epoch_s: how long the best window is remembered (one to two epochs).
        clock: monotonic seconds (tests).

    """

    def __init__(self, maximum: int, *, tolerance: float = 2.0, window: int = 50, epoch_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if maximum < 1 or tolerance < 1 or window < 1 or epoch_s <= 0:
            raise ValueError("maximum and window must be >= 1, tolerance >= 1 and epoch_s > 0")
        self.maximum = maximum
        self.tolerance = tolerance
        self.window = window
        self.epoch_s = epoch_s
        self._clock = clock
        self._limit = float(maximum)
        self.current = maximum
        """The limit now (an int, read on every request)."""
        self._sum = 0.0
        self._count = 0
        self._best = math.inf
        self._best_before = math.inf
        self._epoch_began = clock()
        self._gauge = metrics.INFLIGHT_LIMIT
        self._gauge.set(maximum)

    @property
    def best(self) -> float:
        """The mean answer time of the best window in this epoch and the previous one (seconds; inf before any)."""
        return min(self._best, self._best_before)

    def record(self, seconds: float) -> None:
        """Count one admitted request's answer time; at the end of a window, move the limit."""
        self._sum += seconds
        self._count += 1
        if self._count < self.window:
            return
        mean = self._sum / self._count
        self._sum, self._count = 0.0, 0
        now = self._clock()
        if now - self._epoch_began >= self.epoch_s:
            self._best_before, self._best, self._epoch_began = self._best, math.inf, now
        self._best = min(self._best, mean)
        gradient = 1.0 if mean <= 0 else max(0.5, min(1.0, self.tolerance * self.best / mean))
        self._limit = max(1.0, min(float(self.maximum), self._limit * gradient + 1))
        self.current = int(self._limit)
        self._gauge.set(self.current)
