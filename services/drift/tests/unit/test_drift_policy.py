"""Multiple-testing correction (scipy as the oracle) and the retrain state machine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from drift.policy import PolicyConfig, PolicyState, correct, decide, rearm
from scipy.stats import false_discovery_control

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_drift_bh_equals_scipy() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = rng.uniform(size=rng.integers(1, 40)) ** 2
        assert correct(p.tolist(), "benjamini-hochberg") == pytest.approx(false_discovery_control(p, method="bh"))


def test_drift_bonferroni_and_none() -> None:
    assert correct([0.2, 0.01], "bonferroni") == [0.4, 0.02]
    assert correct([0.6, 0.01], "bonferroni") == [1.0, 0.02]
    assert correct([0.2], "none") == [0.2]
    assert correct([], "benjamini-hochberg") == []


def run(pattern: str, cfg: PolicyConfig, state: PolicyState | None = None, step_s: float = 60) -> list[int]:
    s = state or PolicyState()
    return [i for i, c in enumerate(pattern)
            if decide(s, drifted=c == "D", at=T0 + timedelta(seconds=i * step_s), config=cfg).retrain]


def test_drift_one_shift_gives_one_command() -> None:
    cfg = PolicyConfig(consecutive=2, clear=3, cooldown_s=0)
    assert run("..DDDDDDDDDD..", cfg) == [3]


def test_drift_single_noisy_windows_never_fire() -> None:
    assert run(".D.D.D.D.D", PolicyConfig(consecutive=2, clear=1, cooldown_s=0)) == []


def test_drift_rearms_after_clean_windows() -> None:
    assert run("DD...DD", PolicyConfig(consecutive=2, clear=3, cooldown_s=0)) == [1, 6]
    assert run("DD..DD", PolicyConfig(consecutive=2, clear=3, cooldown_s=0)) == [1]


def test_drift_cooldown_holds_a_second_command() -> None:
    cfg = PolicyConfig(consecutive=1, clear=1, cooldown_s=300)
    assert run("D.D.D.D.D.", cfg, step_s=60) == [0, 6]


def test_drift_new_champion_rearms_but_keeps_cooldown() -> None:
    cfg = PolicyConfig(consecutive=1, clear=5, cooldown_s=3600)
    s = PolicyState()
    assert decide(s, drifted=True, at=T0, config=cfg).retrain
    rearm(s)
    assert s.armed
    later = decide(s, drifted=True, at=T0 + timedelta(minutes=10), config=cfg)
    assert not later.retrain and "cooldown" in later.reason
    assert PolicyState.from_dict(s.to_dict()) == s


def test_drift_a_command_that_changed_nothing_is_retried_after_the_cooldown() -> None:
    # The trainer refused the first command (or training failed): the drift goes on, no clean
    # window re-arms the machine; once the cooldown has passed the drift is confirmed again
    # (2 windows) and fires again, once per cooldown at most.
    cfg = PolicyConfig(consecutive=2, clear=3, cooldown_s=300)
    assert run("D" * 14, cfg, step_s=60) == [1, 7, 13]
    # without a cooldown only clean windows re-arm (a retry at every window would be a storm)
    assert run("D" * 14, PolicyConfig(consecutive=2, clear=3, cooldown_s=0)) == [1]
