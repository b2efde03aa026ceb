"""Drift reports: per feature, per test, over one window of the stream."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.envelope import DatasetName, Event, EventId
from schemas.training import OffsetRange

DriftTest = Literal[
    "ks", "psi", "chi2", "js", "new_categories", "missing_rate", "out_of_range",
    "unexpected_features", "missing_features", "prediction_ks", "prediction_psi", "adwin", "page_hinkley",
]


class FeatureDrift(BaseModel):
    """The result of one test on one feature (or on the predictions or the error rate)."""

    model_config = ConfigDict(frozen=True)

    feature: str
    test: DriftTest
    statistic: float
    p_value: float | None = None
    adjusted_p_value: float | None = Field(default=None, description="After multiple-testing correction.")
    threshold: float
    drifted: bool
    sample_size: int = Field(ge=0)


class DriftReportV1(Event):
    """The outcome of the drift tests of one window of one dataset against the champion's reference."""

    EVENT_TYPE: ClassVar[str] = "drift.drift-report.v1"

    report_id: EventId
    dataset: DatasetName
    model_name: str | None = None
    model_version: int | None = None
    window_start: AwareDatetime
    window_end: AwareDatetime
    offsets: list[OffsetRange] = Field(default_factory=list)
    results: list[FeatureDrift] = Field(default_factory=list)
    correction: Literal["bonferroni", "benjamini-hochberg", "none"] = "benjamini-hochberg"
    drifted: bool
    drifted_features: list[str] = Field(default_factory=list)
    retrain_requested: bool = False
    decision: str = Field(default="", description="Why the policy did or did not request a retrain.")
