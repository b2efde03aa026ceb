"""The circuit breaker in front of Triton: stop waiting on a backend that does not answer.

A frozen or unreachable Triton costs every request the whole backend deadline. The breaker
counts consecutive calls that got no answer (unreachable, or the deadline passed) and, after
``failures`` of them, *opens*: callers then skip Triton at once (the fallback answers, or a fast
503) for ``cooldown_s``. After the cooldown the breaker is *half-open*: exactly one caller, the
probe (a request, or the readiness check when no request comes), may call Triton; its answer
closes the breaker, its failure opens it for another cooldown. Any answer from Triton, even a
refusal of the caller's request (4xx), proves Triton alive: only calls that got no answer count.

One breaker guards the whole backend (a missed deadline or a refused connection is the server's
state, not one model's). The hot path reads one attribute, :attr:`CircuitBreaker.closed`; the
transitions are rare, and each is logged and counted (``inference_breaker_*`` metrics).

>>> now = [0.0]
>>> b = CircuitBreaker("triton", failures=2, cooldown_s=1.0, clock=lambda: now[0])
>>> b.failed("no answer"); b.closed
True
>>> b.failed("no answer"); (b.closed, b.state)
(False, 'open')
>>> b.admit_probe()        # still cooling down: skip Triton
False
>>> now[0] = 1.0
>>> (b.admit_probe(), b.state, b.admit_probe())   # one probe, nobody else
(True, 'half_open', False)
>>> b.probe_succeeded("request"); (b.closed, b.state)
(True, 'closed')
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal

from inference import metrics

log = logging.getLogger(__name__)

State = Literal["closed", "open", "half_open"]
ProbeKind = Literal["request", "health"]

STATE_VALUES: dict[State, int] = {"closed": 0, "open": 1, "half_open": 2}
"""The value of ``inference_breaker_state`` for each state."""


class CircuitBreaker:
    """Closed, open or half-open, for one backend.

    Args:
        name: the backend (``triton``), in metrics and logs.
        failures: consecutive calls without an answer that open the breaker.
        cooldown_s: time an open breaker lets no call through before one probe.
        probe_timeout_s: a probe that has not reported after this long is given up, and the next
            caller probes (a probe's calls have their own deadlines, so this only guards against
            a probe that was lost).
        clock: monotonic seconds (tests).

    """

    def __init__(self, name: str, *, failures: int = 5, cooldown_s: float = 2.0, probe_timeout_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if failures < 1 or cooldown_s <= 0 or probe_timeout_s <= 0:
            raise ValueError("a breaker needs failures >= 1, cooldown_s > 0 and probe_timeout_s > 0")
        self.name = name
        self.threshold = failures
        self.cooldown_s = cooldown_s
        self.probe_timeout_s = probe_timeout_s
        self.closed = True
        """True while closed: the only thing the hot path reads."""
        self.state: State = "closed"
        self.failures = 0
        """Consecutive calls without an answer while closed."""
        self.last_error = ""
        """Why the last counted call failed (in readiness and 503 answers)."""
        self.retry_at = 0.0
        """When an open breaker lets the next probe through (clock seconds)."""
        self._probe_until = 0.0
        self._clock = clock
        self._gauge = metrics.BREAKER_STATE.labels(name)
        self._gauge.set(STATE_VALUES["closed"])

    # -- calls admitted while closed ------------------------------------------------------------

    def failed(self, error: str) -> None:
        """A call let through while closed got no answer; opens the breaker at the threshold.

        A call that started while closed and ends after the breaker opened is not counted again.
        """
        if not self.closed:
            return
        self.failures += 1
        self.last_error = error
        if self.failures >= self.threshold:
            self._open(f"{self.failures} consecutive calls got no answer")

    def succeeded(self) -> None:
        """A call let through while closed got an answer (whatever it said): the count starts again."""
        if self.closed:
            self.failures = 0

    # -- open and half-open -----------------------------------------------------------------------

    def admit_probe(self) -> bool:
        """Whether this caller may call the backend while the breaker is not closed: the one probe.

        True once the cooldown is over and no other probe is out (the breaker turns half-open);
        the caller must then report :meth:`probe_succeeded`, :meth:`probe_failed` or
        :meth:`probe_abandoned`. False otherwise: skip the backend. Always True while closed.
        """
        if self.closed:
            return True
        now = self._clock()
        if self.state == "open":
            if now < self.retry_at:
                return False
        elif now < self._probe_until:
            return False  # half-open, and the probe is still out
        else:
            log.warning("%s circuit breaker: the half-open probe never reported; another caller probes", self.name,
                        extra={"backend": self.name, "breaker_state": self.state})
        self._probe_until = now + self.probe_timeout_s
        self._move("half_open", "cooldown over: one probe may call the backend")
        return True

    def probe_succeeded(self, kind: ProbeKind) -> None:
        """The probe got an answer: close the breaker."""
        if self.state != "half_open":
            return
        metrics.BREAKER_PROBES.labels(self.name, kind, "ok").inc()
        self.failures = 0
        self._move("closed", f"the {kind} probe got an answer")

    def probe_failed(self, kind: ProbeKind, error: str) -> None:
        """The probe got no answer: open the breaker for another cooldown."""
        if self.state != "half_open":
            return
        metrics.BREAKER_PROBES.labels(self.name, kind, "failed").inc()
        self.last_error = error
        self._open(f"the {kind} probe got no answer")

    def probe_abandoned(self) -> None:
        """The probe ended without a verdict (cancelled): back to open, and the next caller probes."""
        if self.state != "half_open":
            return
        self.retry_at = self._clock()
        self._move("open", "the probe was cancelled before it had an answer")

    # -- reading ------------------------------------------------------------------------------------

    def describe(self) -> str:
        """The state in words, for readiness and 503 answers (names the backend and the last failure)."""
        backend = self.name.capitalize() if self.name == "triton" else self.name
        if self.closed:
            return f"{backend} circuit breaker closed"
        last = f" (last: {self.last_error})" if self.last_error else ""
        if self.state == "half_open":
            return f"{backend} circuit breaker half-open: one probe is checking whether it answers again{last}"
        wait = max(0.0, self.retry_at - self._clock())
        return (f"{backend} circuit breaker open: it did not answer{last}; calls skip it, the next probe in "
                f"{wait:.1f}s")

    # -- transitions --------------------------------------------------------------------------------

    def _open(self, why: str) -> None:
        self.retry_at = self._clock() + self.cooldown_s
        self._move("open", f"{why}; probing again in {self.cooldown_s:g}s")

    def _move(self, state: State, why: str) -> None:
        before = self.state
        self.state = state
        self.closed = state == "closed"
        self._gauge.set(STATE_VALUES[state])
        metrics.BREAKER_TRANSITIONS.labels(self.name, before, state).inc()
        level = logging.INFO if state == "closed" or (before, state) == ("open", "half_open") else logging.WARNING
        log.log(level, "%s circuit breaker %s -> %s: %s%s", self.name, before, state, why,
                f" (last failure: {self.last_error})" if state == "open" and self.last_error else "",
                extra={"backend": self.name, "breaker_from": before, "breaker_to": state, "reason": why,
                       "failures": self.failures, "last_error": self.last_error})
