"""Training commands and the exact Kafka data a model was or will be trained on."""

from __future__ import annotations

from typing import ClassVar, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from schemas.envelope import DatasetName, Event, EventId


class OffsetRange(BaseModel):
    """A half-open range ``[start_offset, end_offset)`` of one partition of one topic."""

    model_config = ConfigDict(frozen=True)

    topic: str
    partition: int = Field(ge=0)
    start_offset: int = Field(ge=0)
    end_offset: int = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.end_offset < self.start_offset:
            raise ValueError(f"end_offset {self.end_offset} is before start_offset {self.start_offset}")
        return self


class TrainingWindow(BaseModel):
    """The data of a training run: a time range and, once resolved, the exact offsets read.

    A command may give only times; the trainer resolves them to offsets and records those,
    so the same offsets and seed rebuild the same training set.
    """

    model_config = ConfigDict(frozen=True)

    start_time: AwareDatetime | None = None
    end_time: AwareDatetime | None = None
    offsets: list[OffsetRange] = Field(default_factory=list)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.start_time and self.end_time and self.end_time < self.start_time:
            raise ValueError("end_time is before start_time")
        return self


class RetrainCommandV1(Event):
    """A request to train a new version of a model on a window of a dataset."""

    EVENT_TYPE: ClassVar[str] = "training.retrain-command.v1"

    command_id: EventId
    dataset: DatasetName
    model_name: str = Field(min_length=1, max_length=128)
    reason: Literal["drift", "schedule", "performance", "manual"]
    window: TrainingWindow = Field(default_factory=TrainingWindow)
    requested_by: str = Field(min_length=1, max_length=128)
    requested_at: AwareDatetime
    drift_report_id: str | None = Field(default=None, description="The drift report that caused it.")
    note: str = ""


TrainingFailureReason = Literal[
    "invalid_command", "unknown_dataset", "empty_window", "labels_missing", "too_few_rows", "nan_loss",
    "budget_exceeded", "parity_failed", "champion_unusable", "registry_refused", "registry_unavailable",
    "broker_unavailable", "internal",
]
"""Why a retrain command ended without a model; ``internal`` is a bug, the others are conditions."""


class SliceCheck(BaseModel):
    """One comparison of the gate: a metric of the candidate against the champion's, overall or on a slice."""

    model_config = ConfigDict(frozen=True)

    metric: str = Field(description="auc, f1, accuracy (higher is better) or rmse, mae (lower is better).")
    feature: str | None = Field(default=None, description="Categorical feature of the slice; None overall.")
    value: str | None = Field(default=None, description="Category of the slice; None overall.")
    rows: int = Field(ge=0, description="Holdout rows in the slice.")
    candidate: float | None = None
    champion: float | None = None
    allowed: float | None = Field(default=None, description="The worst candidate value that still passes.")
    passed: bool
    note: str = ""


class ServingCheck(BaseModel):
    """The check that the serving engine (Triton) reproduces the exported model's outputs."""

    model_config = ConfigDict(frozen=True)

    status: Literal["passed", "failed", "skipped"]
    reason: str = ""
    samples: int = Field(default=0, ge=0)
    sample_source: Literal["predictions", "holdout", "none"] = "none"
    max_abs_diff: float | None = None
    tolerance: float | None = None


class PromotionDecidedV1(Event):
    """The gate's decision on a trained candidate, with every comparison that led to it."""

    EVENT_TYPE: ClassVar[str] = "training.promotion-decided.v1"

    decision_id: EventId
    command_id: EventId
    model_name: str = Field(min_length=1, max_length=128)
    dataset: DatasetName
    candidate_version: int | None = Field(default=None, ge=1, description="None when it was not registered.")
    champion_version: int | None = Field(default=None, ge=1, description="None when there was no champion.")
    decision: Literal["promote", "refuse", "blocked"] = Field(
        description="promote: the canary alias was set; refuse: the gate failed (nothing registered); "
        "blocked: registered, but serving parity failed so the canary was not set."
    )
    reasons: list[str] = Field(default_factory=list)
    margin: float = Field(ge=0)
    slice_margin: float = Field(ge=0)
    min_slice_rows: int = Field(ge=1)
    holdout_rows: int = Field(ge=0)
    checks: list[SliceCheck] = Field(default_factory=list)
    serving: ServingCheck | None = None
    decided_at: AwareDatetime


class TrainingCompletedV1(Event):
    """A retrain command produced a model that the gate promoted, refused or whose rollout was blocked."""

    EVENT_TYPE: ClassVar[str] = "training.training-completed.v1"

    command_id: EventId
    model_name: str = Field(min_length=1, max_length=128)
    dataset: DatasetName
    reason: Literal["drift", "schedule", "performance", "manual"]
    outcome: Literal["promoted", "refused", "blocked"]
    version: int | None = Field(default=None, ge=1, description="Registered version; None when refused.")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$", description="Of the ONNX bytes.")
    window: TrainingWindow = Field(description="The resolved window: times and the exact offsets read.")
    seed: int
    train_rows: int = Field(ge=0)
    holdout_rows: int = Field(ge=0)
    epochs: int = Field(ge=0)
    stopped_because: str = ""
    metrics: dict[str, float] = Field(default_factory=dict, description="Holdout metrics of the candidate.")
    onnx_max_abs_diff: float = Field(ge=0, description="PyTorch vs onnxruntime on the holdout.")
    decision_id: EventId
    duration_s: float = Field(ge=0)
    completed_at: AwareDatetime


class TrainingFailedV1(Event):
    """A retrain command ended without a model; nothing was registered."""

    EVENT_TYPE: ClassVar[str] = "training.training-failed.v1"

    command_id: EventId
    model_name: str = Field(min_length=1, max_length=128)
    dataset: str
    reason: TrainingFailureReason
    message: str = Field(description="What failed and what to do about it.")
    window: TrainingWindow | None = Field(default=None, description="The resolved window, when it got that far.")
    failed_at: AwareDatetime
