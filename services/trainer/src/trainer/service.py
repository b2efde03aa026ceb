"""The trainer's core: one retrain command in, published outcome events out.

:meth:`TrainerService.run` knows nothing about HTTP or consumer groups. For a command it

1. skips it when the ledger already has its outcome (idempotence per command id);
2. loads the dataset spec, resolves the window to offsets and rebuilds it from Kafka;
3. trains (deterministically), exports ONNX and checks PyTorch/onnxruntime parity;
4. scores the candidate and the champion on the same time-based holdout and runs the gate;
5. on a pass: registers the model with its lineage (or finds the version an earlier attempt of
   the same command registered), checks that the serving engine reproduces the ONNX outputs,
   and points the canary alias at it;
6. returns the events to publish: the gate decision and ``training-completed``, or
   ``training-failed`` with the reason. Nothing is registered before the gate passed.

Transient trouble (broker or registry unreachable) is raised as :class:`BrokerUnavailable` /
:class:`RegistryUnavailable`, so the adapter retries the command instead of failing it.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from opentelemetry import trace
from schemas.dataset import DatasetSpec, DatasetSpecRegisteredV1
from schemas.envelope import Event
from schemas.training import (
    PromotionDecidedV1,
    RetrainCommandV1,
    ServingCheck,
    TrainingCompletedV1,
    TrainingFailedV1,
    TrainingWindow,
)

from trainer import __version__, metrics
from trainer.contract import InputContract
from trainer.errors import (
    BrokerUnavailable,
    ChampionUnusable,
    LabelsMissing,
    RegistryRefused,
    RegistryUnavailable,
    ServingUnavailable,
    TrainerError,
)
from trainer.evaluation import TASK_METRICS, Evaluation, evaluate
from trainer.gate import GateResult, GateRules, decide
from trainer.ledger import Ledger
from trainer.onnx_model import OnnxModel, check_parity, load_champion, max_abs_diff
from trainer.reference import reference_stats
from trainer.registry_client import RegistryClient
from trainer.settings import Settings
from trainer.table import Table, build_table
from trainer.training import FitConfig, export_onnx, fit, predict
from trainer.triton import TritonClient
from trainer.window import WindowData, WindowReader

log = logging.getLogger(__name__)

TRANSIENT = (BrokerUnavailable, RegistryUnavailable)
"""Errors after which a command is retried rather than failed."""


@dataclass(slots=True)
class Publication:
    """One event to publish: topic, key and payload."""

    topic: str
    key: str
    payload: Event


@dataclass(slots=True)
class RunResult:
    """What a command came to, and the events that say so."""

    command_id: str
    status: Literal["promoted", "refused", "blocked", "failed", "duplicate"]
    events: list[Publication] = field(default_factory=list)
    version: int | None = None
    onnx: bytes | None = None


@dataclass(slots=True)
class Candidate:
    """A trained, exported and parity-checked model with its evaluation."""

    spec: DatasetSpec
    table: Table
    data: WindowData
    onnx: bytes
    sha256: str
    evaluation: Evaluation
    onnx_diff: float
    epochs: int
    stopped_because: str
    params: dict[str, Any]


class TrainerService:
    """Carries out retrain commands (see the module docs)."""

    def __init__(self, settings: Settings, *, reader: WindowReader, registry: RegistryClient, ledger: Ledger,
                 spec_loader: Callable[[str], DatasetSpecRegisteredV1],
                 request_sampler: Callable[[str, int], list[dict[str, object]]],
                 triton: TritonClient | None = None, tracer: trace.Tracer | None = None) -> None:
        self.settings = settings
        self.reader = reader
        self.registry = registry
        self.ledger = ledger
        self.spec_loader = spec_loader
        self.request_sampler = request_sampler
        self.triton = triton
        self.tracer = tracer or trace.get_tracer("trainer")

    def fit_config(self) -> FitConfig:
        """The training configuration from the settings."""
        s = self.settings
        return FitConfig(seed=s.seed, hidden=tuple(s.hidden_layers), onehot_max=s.onehot_max_categories,
                         embedding_dim_max=s.embedding_dim_max, learning_rate=s.learning_rate,
                         weight_decay=s.weight_decay, batch_size=s.batch_size, max_epochs=s.max_epochs,
                         patience=s.patience, time_budget_s=s.time_budget_s, memory_budget_mb=s.memory_budget_mb,
                         device=s.device, threads=s.torch_threads)

    # -- the command --------------------------------------------------------------------------------

    def run(self, command: RetrainCommandV1) -> RunResult:
        """Carry out ``command``; the caller publishes ``events`` and only then acknowledges the command.

        Raises:
            BrokerUnavailable: Kafka could not be read; retry the command later.
            RegistryUnavailable: the registry could not be reached; retry the command later.

        """
        known = self.ledger.get(command.command_id)
        if known is not None:
            metrics.COMMANDS.labels("duplicate").inc()
            return RunResult(command.command_id, "duplicate")
        started = time.monotonic()
        window: TrainingWindow | None = None
        with self.tracer.start_as_current_span("trainer.run", attributes={"command_id": command.command_id,
                                                                           "model": command.model_name}):
            try:
                spec = self.spec_loader(command.dataset)
                window = self.reader.resolve(command.window)
                t0 = time.monotonic()
                data = self.reader.read(command.dataset, window)
                metrics.WINDOW_SECONDS.observe(time.monotonic() - t0)
                metrics.WINDOW_ROWS.inc(data.feature_records + data.label_records)
                candidate = self._train(command, spec, data)
                result = self._decide_and_register(command, candidate, started)
            except TRANSIENT:
                metrics.COMMANDS.labels("retried").inc()
                raise
            except TrainerError as exc:
                result = self._failed(command, exc, window)
            except Exception as exc:  # a bug: still end the command with a recorded reason
                log.exception("retrain command failed unexpectedly", extra={"command_id": command.command_id})
                result = self._failed(command, exc, window)
        metrics.COMMANDS.labels(result.status).inc()
        return result

    def fail(self, command: RetrainCommandV1, exc: Exception) -> RunResult:
        """The failure outcome of ``command`` for ``exc`` (after transient errors exhausted the retries)."""
        return self._failed(command, exc, None)

    def _failed(self, command: RetrainCommandV1, exc: Exception, window: TrainingWindow | None) -> RunResult:
        reason = exc.reason if isinstance(exc, TrainerError) else "internal"
        message = str(exc) if isinstance(exc, TrainerError) else f"unexpected {type(exc).__name__}: {exc}"
        log.warning("retrain command failed", extra={"command_id": command.command_id, "reason": reason,
                                                     "detail": message})
        event = TrainingFailedV1(command_id=command.command_id, model_name=command.model_name,
                                 dataset=command.dataset, reason=reason, message=message, window=window,
                                 failed_at=datetime.now(UTC))
        return RunResult(command.command_id, "failed",
                         [Publication(self.settings.failed_topic, command.model_name, event)])

    # -- training -----------------------------------------------------------------------------------

    def _train(self, command: RetrainCommandV1, spec_event: DatasetSpecRegisteredV1, data: WindowData) -> Candidate:
        s = self.settings
        if not data.examples:
            raise LabelsMissing(f"none of the {data.feature_events} feature events of dataset {command.dataset!r} "
                                f"in the window has a label ({data.labels_unmatched} label events matched no "
                                "feature event); send labels before retraining")
        table = build_table(data.examples, spec_event.spec, holdout_fraction=s.holdout_fraction,
                            validation_fraction=s.validation_fraction, min_rows=s.min_rows,
                            max_categories=s.max_categories)
        config = self.fit_config()
        with self.tracer.start_as_current_span("trainer.fit"):
            result = fit(table, config)
        metrics.TRAIN_SECONDS.observe(result.duration_s)
        onnx_bytes = export_onnx(result.model, table.contract, opset=s.opset)
        onnx_model = OnnxModel(onnx_bytes)
        torch_out = predict(result.model, table.holdout.inputs)
        diff = check_parity(onnx_model, table.holdout.inputs, torch_out, tolerance=s.parity_tolerance)
        scores = onnx_model.run(table.holdout.inputs)
        evaluation = self._evaluate(table, scores)
        params: dict[str, Any] = {
            **config.params(), "command_id": command.command_id, "reason": command.reason,
            "spec_revision": spec_event.revision, "epochs": result.epochs, "best_epoch": result.best_epoch,
            "stopped_because": result.stopped_because, "train_rows": len(table.train),
            "validation_rows": len(table.validation), "holdout_rows": len(table.holdout),
            "holdout_fraction": s.holdout_fraction, "onnx_max_abs_diff": diff, "device": result.device,
            "trainer_version": __version__, "torch_threads": s.torch_threads,
        }
        return Candidate(spec=spec_event.spec, table=table, data=data, onnx=onnx_bytes,
                         sha256=hashlib.sha256(onnx_bytes).hexdigest(),
                         evaluation=evaluation, onnx_diff=diff, epochs=result.epochs,
                         stopped_because=result.stopped_because, params=params)

    @staticmethod
    def _evaluate(table: Table, scores: np.ndarray) -> Evaluation:
        slices = {c.name: table.holdout.slices(c.name) for c in table.contract.categorical}
        return evaluate(table.contract.task, table.holdout.target, scores, slices)

    # -- gate, registration, rollout ----------------------------------------------------------------

    def _champion(self, command: RetrainCommandV1, table: Table) -> tuple[int | None, Evaluation | None]:
        """The champion's version and its evaluation on the candidate's holdout (None, None: no champion).

        Raises:
            ChampionUnusable: there is a champion but it cannot be scored.

        """
        alias = self.registry.alias(command.model_name, "champion")
        if alias is None:
            return None, None
        version = int(alias["version"])
        info = self.registry.version(command.model_name, version)
        stored = (info.get("reference_stats") or {}).get("input_contract")
        fallback = InputContract.model_validate(stored) if stored else None
        model, contract = load_champion(self.registry.artifact(command.model_name, version), fallback)
        if contract.task != table.contract.task or contract.classes != table.contract.classes:
            raise ChampionUnusable(f"champion v{version} predicts {contract.task} {contract.classes}, the dataset's "
                                   f"label is now {table.contract.task} {table.contract.classes}; review and "
                                   "promote the candidate by hand")
        try:
            scores = model.run(contract.encode([ex.features for ex in table.holdout.rows]))
        except Exception as exc:  # onnxruntime's own exception types
            raise ChampionUnusable(f"champion v{version} failed on the holdout: {exc}") from exc
        return version, self._evaluate(table, scores)

    def _decide_and_register(self, command: RetrainCommandV1, candidate: Candidate, started: float) -> RunResult:
        s = self.settings
        task = candidate.table.contract.task
        rules = GateRules(metrics=s.gate_metrics or TASK_METRICS[task], margin=s.gate_margin,
                          slice_margin=s.gate_slice_margin, min_slice_rows=s.gate_min_slice_rows)
        try:
            champion_version, champion_eval = self._champion(command, candidate.table)
            gate = decide(candidate.evaluation, champion_eval, rules, champion_version)
        except ChampionUnusable as exc:
            champion_version = None
            gate = GateResult(False, [str(exc)], [])
        decision_id = f"decision-{command.command_id}"
        version: int | None = None
        serving: ServingCheck | None = None
        reasons = list(gate.reasons)
        if not gate.passed:
            outcome: Literal["promoted", "refused", "blocked"] = "refused"
            decision: Literal["promote", "refuse", "blocked"] = "refuse"
        else:
            version = self._register(command, candidate)
            serving = self._serving_check(command, candidate, version)
            if serving.status == "failed":
                outcome, decision = "blocked", "blocked"
                reasons.append(f"serving check failed: {serving.reason}; the canary alias was not set")
            else:
                try:
                    self.registry.set_alias(command.model_name, "canary", version, weight=s.canary_weight,
                                            reason=f"trainer: command {command.command_id} ({command.reason}); "
                                            + "; ".join(reasons))
                    outcome, decision = "promoted", "promote"
                except RegistryRefused as exc:
                    outcome, decision = "blocked", "blocked"
                    reasons.append(f"the registry refused the canary alias: {exc}")
        now = datetime.now(UTC)
        data = candidate.data
        decided = PromotionDecidedV1(
            decision_id=decision_id, command_id=command.command_id, model_name=command.model_name,
            dataset=command.dataset, candidate_version=version, champion_version=champion_version,
            decision=decision, reasons=reasons, margin=rules.margin, slice_margin=rules.slice_margin,
            min_slice_rows=rules.min_slice_rows, holdout_rows=len(candidate.table.holdout), checks=gate.checks,
            serving=serving, decided_at=now)
        completed = TrainingCompletedV1(
            command_id=command.command_id, model_name=command.model_name, dataset=command.dataset,
            reason=command.reason, outcome=outcome, version=version,
            sha256=candidate.sha256 if version is not None else None, window=data.window, seed=s.seed,
            train_rows=len(candidate.table.train), holdout_rows=len(candidate.table.holdout),
            epochs=candidate.epochs, stopped_because=candidate.stopped_because,
            metrics=candidate.evaluation.metrics, onnx_max_abs_diff=candidate.onnx_diff, decision_id=decision_id,
            duration_s=time.monotonic() - started, completed_at=now)
        log.info("retrain command done", extra={"command_id": command.command_id, "outcome": outcome,
                                                "version": version, "reasons": reasons})
        key = command.model_name
        return RunResult(command.command_id, outcome,
                         [Publication(s.decisions_topic, key, decided), Publication(s.completed_topic, key, completed)],
                         version=version, onnx=candidate.onnx)

    def _register(self, command: RetrainCommandV1, candidate: Candidate) -> int:
        """Register the candidate, or find the version an earlier attempt of this command registered."""
        existing = self.registry.version_for_command(command.model_name, command.command_id)
        if existing is not None:
            log.info("reusing the version registered for this command",
                     extra={"command_id": command.command_id, "version": existing["version"]})
            return int(existing["version"])
        contract = candidate.table.contract
        metadata = {
            "inputs": [t.model_dump() for t in contract.inputs()],
            "outputs": [t.model_dump() for t in contract.outputs()],
            "metrics": candidate.evaluation.metrics,
            "params": candidate.params,
            "dataset": command.dataset,
            "training_window": candidate.data.window.model_dump(mode="json"),
            "reference_stats": reference_stats(candidate.table.train.rows, candidate.spec, contract),
            "code_version": self.settings.code_version or f"tributary-trainer {__version__}",
            "description": f"trained by the trainer for command {command.command_id} ({command.reason}) on "
                           f"{len(candidate.table.train)} rows",
        }
        with self.tracer.start_as_current_span("trainer.register"):
            version = self.registry.register(command.model_name, candidate.onnx, metadata)
        return int(version["version"])

    def _serving_check(self, command: RetrainCommandV1, candidate: Candidate, version: int) -> ServingCheck:
        s = self.settings
        tolerance = s.serving_tolerance
        if self.triton is None:
            return ServingCheck(status="skipped", tolerance=tolerance,
                                reason="no Triton URL is configured (TRAINER_TRITON_URL): the served model was "
                                       "not compared with the ONNX outputs")
        contract = candidate.table.contract
        rows = self.request_sampler(command.model_name, s.serving_sample_size)
        source: Literal["predictions", "holdout"] = "predictions"
        if not rows:
            rows = [ex.features for ex in candidate.table.holdout.rows[-s.serving_sample_size:]]
            source = "holdout"
        inputs = contract.encode(rows)
        expected = OnnxModel(candidate.onnx).run(inputs)
        name = s.triton_model_name or command.model_name
        staged = self._stage(command.model_name, version) if s.triton_stage_alias else None
        try:
            self.triton.wait_ready(name, version, s.triton_ready_timeout_s)
            served = self.triton.infer(name, version, inputs, contract.output)
        except ServingUnavailable as exc:
            return ServingCheck(status="failed", reason=str(exc), samples=len(rows), sample_source=source,
                                tolerance=tolerance)
        finally:
            if staged is not None:
                self._unstage(command.model_name, staged)
        diff = max_abs_diff(served, expected)
        metrics.SERVING_DIFF.observe(diff if np.isfinite(diff) else 1e9)
        if not diff <= tolerance:
            return ServingCheck(status="failed", samples=len(rows), sample_source=source, max_abs_diff=diff,
                                tolerance=tolerance,
                                reason=f"Triton's outputs differ from onnxruntime's by up to {diff:.3g} on "
                                       f"{len(rows)} {source} rows (tolerance {tolerance:g})")
        return ServingCheck(status="passed", samples=len(rows), sample_source=source, max_abs_diff=diff,
                            tolerance=tolerance)

    def _stage(self, model: str, version: int) -> tuple[str, int | None]:
        """Point the staging alias at ``version`` so Triton loads it; returns what it pointed at before."""
        alias = self.settings.triton_stage_alias or "shadow"
        before = self.registry.alias(model, alias)
        self.registry.set_alias(model, alias, version, reason=f"trainer: serving check of v{version}")
        return alias, (int(before["version"]) if before else None)

    def _unstage(self, model: str, staged: tuple[str, int | None]) -> None:
        alias, previous = staged
        try:
            if previous is None:
                self.registry.remove_alias(model, alias, reason="trainer: serving check done")
            else:
                self.registry.set_alias(model, alias, previous, reason="trainer: serving check done, restored")
        except (RegistryRefused, RegistryUnavailable) as exc:
            log.warning("could not restore the staging alias", extra={"alias": alias, "reason": str(exc)})


def new_command(*, model_name: str, dataset: str, reason: Literal["drift", "schedule", "performance", "manual"],
                requested_by: str, window: TrainingWindow | None = None, command_id: str | None = None,
                note: str = "") -> RetrainCommandV1:
    """A retrain command (the API, CLI and schedule make them the same way)."""
    return RetrainCommandV1(command_id=command_id or f"cmd-{uuid.uuid4()}", dataset=dataset, model_name=model_name,
                            reason=reason, window=window or TrainingWindow(), requested_by=requested_by,
                            requested_at=datetime.now(UTC), note=note)
