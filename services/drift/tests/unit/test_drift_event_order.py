"""Drift takes rollout and spec records in the order of their changes, not of their arrival."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from drift.monitor import MonitorConfig
from drift.service import DriftService
from schemas.dataset import DatasetSpec, DatasetSpecRegisteredV1
from schemas.registry import RolloutChangedV1

from services.drift.tests.unit.test_drift_recovery import T0, NoReferences, champion


async def test_an_older_champion_record_arriving_last_changes_nothing() -> None:
    """The rollout topic can carry an older record after a newer one; the champion follows the newest change."""
    store: dict[str, Any] = {"model/m": "credit"}
    service = DriftService(MonitorConfig(), store, references=NoReferences(), publisher=None)  # type: ignore[arg-type]
    await service.on_rollout_changed(champion(2, T0 + timedelta(seconds=10)))
    await service.on_rollout_changed(champion(1, T0))                               # older, arrived later
    assert store["champion/m"] == 2
    await service.on_rollout_changed(champion(2, T0 + timedelta(seconds=10)))       # the gateway's republish
    assert store["champion/m"] == 2
    removal = RolloutChangedV1(model_name="m", alias="champion", version=None, changed_by="test",
                               changed_at=T0 + timedelta(seconds=20))
    await service.on_rollout_changed(removal)                                       # newer: kept as the order
    await service.on_rollout_changed(champion(3, T0 + timedelta(seconds=15)))       # older than the removal
    assert store["champion/m"] == 2
    await service.on_rollout_changed(champion(3, T0 + timedelta(seconds=30)))
    assert store["champion/m"] == 3
    # The same instant: the greater author, then version, as in the gateway.
    same = T0 + timedelta(seconds=40)
    await service.on_rollout_changed(RolloutChangedV1(model_name="m", alias="champion", version=5,
                                                      changed_by="registry", changed_at=same))
    await service.on_rollout_changed(RolloutChangedV1(model_name="m", alias="champion", version=4,
                                                      changed_by="operator", changed_at=same))
    assert store["champion/m"] == 5


def spec_record(revision: int, features: list[str]) -> DatasetSpecRegisteredV1:
    spec = DatasetSpec.model_validate({"name": "credit", "features": [{"name": f, "type": "numeric"} for f in features],
                                       "label": {"type": "binary"}})
    return DatasetSpecRegisteredV1(spec=spec, revision=revision)


async def test_the_highest_spec_revision_wins_whatever_the_arrival_order() -> None:
    store: dict[str, Any] = {}
    service = DriftService(MonitorConfig(), store, references=NoReferences(), publisher=None)  # type: ignore[arg-type]
    await service.on_spec(spec_record(1, ["x"]))
    await service.on_spec(spec_record(3, ["x", "z"]))
    await service.on_spec(spec_record(2, ["x", "y"]))                   # older revision, arrived later
    assert [f["name"] for f in store["spec/credit"]["features"]] == ["x", "z"]
    await service.on_spec(spec_record(3, ["x", "w"]))                   # the same revision again: the later one
    assert [f["name"] for f in store["spec/credit"]["features"]] == ["x", "w"]
    await service.on_spec(spec_record(4, ["y"]))
    assert [f["name"] for f in store["spec/credit"]["features"]] == ["y"] and store["spec-revision/credit"] == 4
