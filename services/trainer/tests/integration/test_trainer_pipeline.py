"""Retrain commands end to end against the real broker and the real registry."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr
from schemas.training import PromotionDecidedV1, TrainingCompletedV1, TrainingFailedV1, TrainingWindow
from trainer.ledger import Ledger
from trainer.service import RunResult, TrainerService, new_command
from trainer.settings import Settings

from .conftest import Registry

pytestmark = pytest.mark.integration


def command(model: str, dataset: str, **kwargs: Any) -> Any:
    return new_command(model_name=model, dataset=dataset, reason="manual", requested_by="test", **kwargs)


def outcome(result: RunResult) -> TrainingCompletedV1:
    completed = [p.payload for p in result.events if isinstance(p.payload, TrainingCompletedV1)]
    assert completed, [p.payload for p in result.events]
    return completed[0]


def decision(result: RunResult) -> PromotionDecidedV1:
    return next(p.payload for p in result.events if isinstance(p.payload, PromotionDecidedV1))


def failure(result: RunResult) -> TrainingFailedV1:
    assert result.status == "failed", result
    payload = result.events[0].payload
    assert isinstance(payload, TrainingFailedV1)
    return payload


def test_train_register_canary_idempotence_and_reproducibility(
        service: TrainerService, registry: Registry, dataset: Callable[..., str],
        make_rows: Callable[..., list[dict[str, Any]]], unique: str) -> None:
    model = f"m-{unique}"
    name = dataset(make_rows(600, seed=21))
    cmd = command(model, name)
    result = service.run(cmd)
    done = outcome(result)
    assert result.status == "promoted" and done.version == 1 and done.outcome == "promoted"
    assert done.metrics["auc"] > 0.8 and done.onnx_max_abs_diff <= 1e-4
    assert decision(result).decision == "promote" and decision(result).serving is not None
    assert decision(result).serving.status == "skipped"  # type: ignore[union-attr]
    assert "no Triton URL" in decision(result).serving.reason  # type: ignore[union-attr]

    version = registry.get(f"/v1/models/{model}/versions/1")
    assert version["params"]["command_id"] == cmd.command_id and version["dataset"] == name
    assert version["training_window"]["offsets"] == [r.model_dump(mode="json") for r in done.window.offsets]
    assert version["sha256"] == done.sha256
    stats = version["reference_stats"]
    assert stats["input_contract"]["numeric"] == ["x1", "x2"] and stats["features"]["region"]["type"] == "categorical"
    assert set(stats["features"]["x1"]["quantiles"]) >= {"0.01", "0.5", "0.99"}
    assert 0 < len(stats["features"]["x1"]["sample"]) <= 2000  # the drift service's KS reference
    assert [i["name"] for i in version["inputs"]] == ["numeric", "categorical"]
    canary = registry.get(f"/v1/models/{model}/aliases/canary")
    assert canary["version"] == 1 and canary["weight"] == pytest.approx(0.1)

    # The same command again: the ledger knows it.
    service.ledger.record(done)
    assert service.run(cmd).status == "duplicate"
    # Even with the outcome lost (crash before publishing), the registry's record of the command id is reused.
    service.ledger = Ledger()
    again = service.run(cmd)
    assert outcome(again).version == 1 and registry.get(f"/v1/models/{model}/versions")["count"] == 1

    # Retraining from the recorded offsets with the same seed gives the same bytes.
    replay = service.run(command(model, name, window=TrainingWindow(offsets=done.window.offsets)))
    assert outcome(replay).sha256 == done.sha256 and outcome(replay).version == 2
    artifact = registry.get(f"/v1/models/{model}/versions/2")
    assert artifact["sha256"] == done.sha256


def test_the_gate_refuses_a_worse_candidate_and_accepts_a_comparable_one(
        service: TrainerService, registry: Registry, dataset: Callable[..., str],
        make_rows: Callable[..., list[dict[str, Any]]], unique: str) -> None:
    model = f"m-{unique}"
    first = service.run(command(model, dataset(make_rows(600, seed=31))))
    assert outcome(first).version == 1
    registry.set_alias(model, "champion", 1)

    # Trained on random labels (the early 80% of the rows), judged on clean recent rows: worse.
    noisy = service.run(command(model, dataset(make_rows(600, seed=32, noisy_until=0.8))))
    refused = outcome(noisy)
    assert noisy.status == "refused" and refused.version is None and refused.sha256 is None
    verdict = decision(noisy)
    assert verdict.decision == "refuse" and verdict.champion_version == 1
    assert any(r.startswith("auc overall") for r in verdict.reasons)
    assert any(not c.passed and c.feature is None for c in verdict.checks)
    assert registry.get(f"/v1/models/{model}/versions")["count"] == 1  # nothing registered
    assert registry.get(f"/v1/models/{model}/aliases/canary")["version"] == 1

    clean = service.run(command(model, dataset(make_rows(600, seed=33))))
    accepted = decision(clean)
    assert clean.status == "promoted" and accepted.decision == "promote" and accepted.champion_version == 1
    assert all(c.passed for c in accepted.checks) and any(c.feature == "region" for c in accepted.checks)
    assert registry.get(f"/v1/models/{model}/aliases/canary")["version"] == 2


def test_failures_end_as_failure_events_and_register_nothing(
        service: TrainerService, settings: Settings, registry: Registry, dataset: Callable[..., str],
        make_rows: Callable[..., list[dict[str, Any]]], unique: str) -> None:
    model = f"m-{unique}"
    future = datetime.now(UTC) + timedelta(hours=1)
    empty = failure(service.run(command(model, dataset(make_rows(60, seed=41)),
                                        window=TrainingWindow(start_time=future))))
    assert empty.reason == "empty_window" and empty.window is not None and "widen the window" in empty.message
    unlabelled = failure(service.run(command(model, dataset(make_rows(80, seed=42), labels="none"))))
    assert unlabelled.reason == "labels_missing"
    unknown = failure(service.run(command(model, "no-such-dataset")))
    assert unknown.reason == "unknown_dataset"

    from trainer.app import build_service

    bad_token = settings.model_copy(update={"registry_token": SecretStr("not-a-token")})
    refused_by_registry = build_service(bad_token, Ledger())
    try:
        refusal = failure(refused_by_registry.run(command(model, dataset(make_rows(300, seed=43)))))
    finally:
        refused_by_registry.registry.close()
    assert refusal.reason == "registry_refused" and "401" in refusal.message
    assert registry.get(f"/v1/models/{model}") is None  # nothing registered at all


def test_regression_and_multiclass_models(service: TrainerService, registry: Registry, dataset: Callable[..., str],
                                          make_rows: Callable[..., list[dict[str, Any]]], unique: str) -> None:
    for label, output, width in (("regression", "prediction", 1), ("multiclass", "probabilities", 3)):
        model = f"m-{label}-{unique}"
        result = service.run(command(model, dataset(make_rows(400, seed=51, label=label), label=label)))
        assert result.status == "promoted", result.events
        version = registry.get(f"/v1/models/{model}/versions/1")
        assert version["outputs"] == [{"name": output, "datatype": "FP32", "shape": [-1, width]}]
        assert set(version["metrics"]) == ({"rmse", "mae"} if label == "regression" else {"auc", "f1", "accuracy"})
        assert hashlib.sha256(result.onnx or b"").hexdigest() == version["sha256"]
