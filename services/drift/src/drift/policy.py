"""The decision policy: multiple-testing correction across features, then when to ask for a retrain.

A window's p-values (KS, chi-squared, prediction KS) are corrected together, Bonferroni (family
error rate) or Benjamini-Hochberg (false discovery rate). Whether a corrected window asks for a
retrain is a small state machine per dataset, so one shift gives one command, not a storm:

* **arming (hysteresis on):** ``consecutive`` drifted windows in a row fire; a single noisy
  window does not;
* **disarming (hysteresis off):** after firing, nothing fires again until ``clear`` clean
  windows in a row were seen (the shift is over, or the new model absorbed it);
* **cooldown:** never two commands within ``cooldown_s`` (event time of the windows), however
  the state machine moved;
* **retry:** a command that changed nothing (the trainer refused it, or training failed, so the
  drift goes on and no clean window ever re-arms the machine) is not the last one: once
  ``cooldown_s`` (> 0) of event time has passed since it, a drifted window re-arms the machine
  and the next confirmed drift fires again. With ``cooldown_s == 0`` only clean windows re-arm.

A new champion re-arms the machine (its own drift is a new question) but keeps the cooldown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np

Correction = Literal["bonferroni", "benjamini-hochberg", "none"]


def correct(p_values: Sequence[float], method: Correction) -> list[float]:
    """Adjusted p-values, in the input order.

    Examples:
        >>> correct([0.01, 0.04, 0.03], "bonferroni")
        [0.03, 0.12, 0.09]
        >>> [round(p, 4) for p in correct([0.01, 0.04, 0.03], "benjamini-hochberg")]
        [0.03, 0.04, 0.04]

    """
    p = np.asarray(p_values, dtype=np.float64)
    k = p.size
    if k == 0 or method == "none":
        return [float(x) for x in p]
    if method == "bonferroni":
        return [float(x) for x in np.minimum(1.0, p * k)]
    order = np.argsort(p)
    ranked = p[order] * k / np.arange(1, k + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]          # step-up: monotone from the largest
    adjusted = np.empty(k)
    adjusted[order] = np.minimum(1.0, ranked)
    return [float(x) for x in adjusted]


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Thresholds of the retrain decision."""

    consecutive: int = 2
    """Drifted windows in a row that fire a retrain."""
    clear: int = 3
    """Clean windows in a row that re-arm after a command."""
    cooldown_s: float = 3600.0
    """Least event time between two commands for one dataset."""


@dataclass(slots=True)
class PolicyState:
    """Where the state machine of one dataset stands (persisted with the stream's state)."""

    armed: bool = True
    drifted_run: int = 0
    clean_run: int = 0
    last_fired_at: str | None = None
    commands: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"armed": self.armed, "drifted_run": self.drifted_run, "clean_run": self.clean_run,
                "last_fired_at": self.last_fired_at, "commands": self.commands}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> PolicyState:
        """Back from :meth:`to_dict`; a missing state is a fresh one."""
        return cls(**data) if data else cls()


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy decided about one window, and why (goes into the report)."""

    retrain: bool
    reason: str


def decide(state: PolicyState, *, drifted: bool, at: datetime, config: PolicyConfig) -> Decision:
    """Advance ``state`` by one window and say whether to ask for a retrain.

    Examples:
        >>> from datetime import UTC, datetime, timedelta
        >>> s, t = PolicyState(), datetime(2026, 1, 1, tzinfo=UTC)
        >>> cfg = PolicyConfig(consecutive=2, clear=2, cooldown_s=60)
        >>> [decide(s, drifted=d, at=t + timedelta(seconds=i), config=cfg).retrain
        ...  for i, d in enumerate([True, True, True, True, False, False, True, True])]
        [False, True, False, False, False, False, False, False]

    The last pair is drifted again after re-arming but still inside the 60 s cooldown.
    """
    if not drifted:
        state.drifted_run = 0
        state.clean_run += 1
        if not state.armed and state.clean_run >= config.clear:
            state.armed = True
            return Decision(False, f"no drift; re-armed after {state.clean_run} clean windows")
        return Decision(False, "no drift")
    state.clean_run = 0
    state.drifted_run += 1
    if not state.armed and config.cooldown_s > 0 and state.last_fired_at is not None and (
            at - datetime.fromisoformat(state.last_fired_at) >= timedelta(seconds=config.cooldown_s)):
        # the last command did not end the drift (refused, failed, or its model no better)
        state.armed = True
        state.drifted_run = 1
    if not state.armed:
        return Decision(False, f"drift continues; disarmed until {config.clear} clean windows in a row "
                               f"or {config.cooldown_s:.0f}s after the last command")
    if state.drifted_run < config.consecutive:
        return Decision(False, f"drift in {state.drifted_run} of {config.consecutive} consecutive windows needed")
    if state.last_fired_at is not None:
        since = at - datetime.fromisoformat(state.last_fired_at)
        if since < timedelta(seconds=config.cooldown_s):
            return Decision(False, f"drift confirmed but in cooldown ({since.total_seconds():.0f}s of "
                                   f"{config.cooldown_s:.0f}s since the last command)")
    state.armed = False
    state.last_fired_at = at.isoformat()
    state.commands += 1
    return Decision(True, f"drift in {state.drifted_run} consecutive windows: retrain requested")


def rearm(state: PolicyState) -> None:
    """A new champion: forget the runs, arm again (the cooldown stays)."""
    state.armed = True
    state.drifted_run = 0
    state.clean_run = 0
