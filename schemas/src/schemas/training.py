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
