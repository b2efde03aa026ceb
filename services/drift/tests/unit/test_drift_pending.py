"""Predictions waiting for their label are bounded: by age in event time and by count per dataset."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from drift.errors import ReferenceUnavailable
from drift.monitor import MonitorConfig, RecordPosition
from drift.reference import VersionInfo
from drift.service import DriftService
from prometheus_client import REGISTRY
from schemas.inference import PredictionEventV1
from schemas.ingest import LabelEventV1

T0 = datetime(2026, 5, 1, tzinfo=UTC)


class NoReferences:
    async def version(self, model_name: str, version: int) -> VersionInfo:
        raise ReferenceUnavailable("not needed here")


class NoPublisher:
    async def report(self, report: Any) -> None:
        raise AssertionError("no window closes here")

    async def command(self, command: Any) -> None:
        raise AssertionError("no window closes here")


def service(store: dict[str, Any], **bounds: Any) -> DriftService:
    return DriftService(MonitorConfig(window_size=50, window_step=50), store, references=NoReferences(),
                        publisher=NoPublisher(), **bounds)


def prediction(dataset: str, entity: str, at: datetime) -> PredictionEventV1:
    return PredictionEventV1(request_id=f"r-{entity}", model_name="m", model_version=1, route="champion",
                             dataset=dataset, entity_id=entity, outputs={}, prediction=1.0, latency_ms=1.0,
                             served_at=at)


def label(dataset: str, entity: str) -> LabelEventV1:
    return LabelEventV1(event_id=f"l-{entity}", dataset=dataset, entity_id=entity, event_time=T0, label=1)


def evicted(dataset: str, reason: str) -> float:
    return REGISTRY.get_sample_value("drift_pending_predictions_evicted_total",
                                     {"dataset": dataset, "reason": reason}) or 0.0


def waiting(store: dict[str, Any], dataset: str) -> list[str]:
    return sorted(k.rsplit("/", 1)[1] for k in store if k.startswith(f"pred/{dataset}/"))


def test_predictions_older_than_the_ttl_behind_the_newest_are_dropped() -> None:
    store: dict[str, Any] = {}
    s = service(store, pending_ttl_s=3600.0)
    for i, minutes in enumerate([0, 30, 50, 100, 130]):     # event time of each prediction
        s.on_prediction(prediction("ttl", f"k{i}", T0 + timedelta(minutes=minutes)), RecordPosition("p", 0, i))
    # at 100 min, k0 (0) was over an hour behind; at 130 min, k1 (30) and k2 (50) too
    assert waiting(store, "ttl") == ["k3", "k4"]
    assert evicted("ttl", "ttl") == 3
    assert s.on_label(label("ttl", "k1")) is False          # its prediction is gone: no join
    assert s.on_label(label("ttl", "k4")) is True


def test_at_most_pending_max_predictions_wait_per_dataset_oldest_dropped_first() -> None:
    store: dict[str, Any] = {}
    s = service(store, pending_max=3, pending_ttl_s=None)
    for i in range(5):
        s.on_prediction(prediction("cap", f"k{i}", T0), RecordPosition("p", 0, i))
    assert waiting(store, "cap") == ["k2", "k3", "k4"] and evicted("cap", "limit") == 2
    assert s.on_label(label("cap", "k3")) is True            # a join frees its place
    s.on_prediction(prediction("cap", "k5", T0), RecordPosition("p", 0, 5))
    assert waiting(store, "cap") == ["k2", "k4", "k5"] and evicted("cap", "limit") == 2
    # a restarted service finds the waiting predictions in its state, oldest first
    again = service(store, pending_max=3, pending_ttl_s=None)
    again.on_prediction(prediction("cap", "k6", T0 + timedelta(seconds=1)), RecordPosition("p", 0, 6))
    assert waiting(store, "cap") == ["k4", "k5", "k6"] and evicted("cap", "limit") == 3


def test_pending_predictions_in_the_earlier_layout_are_joined_and_dropped_first() -> None:
    store: dict[str, Any] = {"pred/old/k0": [0.0, 1]}          # [value, version], no time
    s = service(store, pending_max=2)
    assert s.on_label(label("old", "k0")) is True
    store["pred/old/k1"] = [0.0, 1]
    s = service(store, pending_max=2)
    for i in (2, 3):
        s.on_prediction(prediction("old", f"k{i}", T0), RecordPosition("p", 0, i))
    assert waiting(store, "old") == ["k2", "k3"]
