"""Drift-to-recovery time: from the first drifted window of a dataset to its model's next champion."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from drift import metrics
from drift.errors import ReferenceUnavailable
from drift.monitor import MonitorConfig, Observation
from drift.reference import VersionInfo
from drift.service import DriftService
from schemas.drift import DriftReportV1
from schemas.registry import RolloutChangedV1

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


class NoReferences:
    async def version(self, model_name: str, version: int) -> VersionInfo:
        raise ReferenceUnavailable("not needed here")


class Clock:
    def __init__(self) -> None:
        self.now = T0.timestamp()

    def __call__(self) -> float:
        return self.now


def report(n: int, *, drifted: bool, version: int = 1) -> DriftReportV1:
    return DriftReportV1(report_id=f"credit-w{n}", dataset="credit", model_name="m", model_version=version,
                         window_start=T0, window_end=T0, drifted=drifted)


def champion(version: int, at: datetime) -> RolloutChangedV1:
    return RolloutChangedV1(model_name="m", alias="champion", version=version, changed_by="test", changed_at=at)


def value(gauge: Any, *labels: str) -> float:
    return float(gauge.labels(*labels)._value.get())


async def test_recovery_runs_from_the_first_drifted_window_to_the_next_champion() -> None:
    clock = Clock()
    store: dict[str, Any] = {"model/m": "credit"}
    service = DriftService(MonitorConfig(), store, references=NoReferences(), publisher=None,  # type: ignore[arg-type]
                           recovery_objective_s=600, clock=clock)
    service._start_episode(report(1, drifted=False))
    assert "episode/credit" not in store
    service._start_episode(report(2, drifted=True))
    assert value(metrics.EPISODE_STARTED, "credit") == clock.now
    clock.now += 120
    service._start_episode(report(3, drifted=True))            # still the same episode
    await service.on_rollout_changed(champion(1, T0 + timedelta(seconds=200)))   # same version: not a recovery
    assert "episode/credit" in store
    met_before = value(metrics.RECOVERIES, "credit", "m", "met")
    await service.on_rollout_changed(champion(2, T0 + timedelta(seconds=300)))
    assert value(metrics.RECOVERY_SECONDS, "credit", "m") == 300
    assert value(metrics.RECOVERIES, "credit", "m", "met") == met_before + 1
    assert value(metrics.EPISODE_STARTED, "credit") == 0
    assert "episode/credit" not in store

    # The next episode misses the objective.
    clock.now = (T0 + timedelta(hours=1)).timestamp()
    service._start_episode(report(9, drifted=True, version=2))
    missed_before = value(metrics.RECOVERIES, "credit", "m", "missed")
    await service.on_rollout_changed(champion(3, T0 + timedelta(hours=2)))
    assert value(metrics.RECOVERY_SECONDS, "credit", "m") == 3600
    assert value(metrics.RECOVERIES, "credit", "m", "missed") == missed_before + 1


async def test_a_drift_without_a_known_champion_opens_no_episode() -> None:
    store: dict[str, Any] = {}
    service = DriftService(MonitorConfig(), store, references=NoReferences(), publisher=None)  # type: ignore[arg-type]
    service._start_episode(DriftReportV1(report_id="x-w1", dataset="x", window_start=T0, window_end=T0, drifted=True))
    assert store == {}


def test_a_restarted_service_sets_the_open_episode_gauge_again_from_its_state() -> None:
    store: dict[str, Any] = {"model/m": "credit-restart"}
    first = DriftService(MonitorConfig(), store, references=NoReferences(), publisher=None)  # type: ignore[arg-type]
    first.monitor("credit-restart").observe(Observation({"x": 1.0}, T0, "t", 0, 0))   # the dataset has state
    first._start_episode(DriftReportV1(report_id="credit-restart-w3", dataset="credit-restart", model_name="m",
                                       model_version=1, window_start=T0, window_end=T0, drifted=True))
    started = value(metrics.EPISODE_STARTED, "credit-restart")
    assert started > 0
    metrics.EPISODE_STARTED.labels("credit-restart").set(0)     # a new process: gauges start empty
    again = DriftService(MonitorConfig(), store, references=NoReferences(), publisher=None)  # type: ignore[arg-type]
    again.restore_gauges()
    assert value(metrics.EPISODE_STARTED, "credit-restart") == started

