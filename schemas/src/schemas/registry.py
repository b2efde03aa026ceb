"""Registry events: model versions registered and aliases moved."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.envelope import Event
from schemas.training import TrainingWindow

Alias = Literal["champion", "canary", "shadow"]
_EPOCH = datetime.fromtimestamp(0, UTC)
_MICROSECOND = timedelta(microseconds=1)


class TensorSpec(BaseModel):
    """One input or output of a model: name, KServe v2 datatype, shape (-1 for dynamic)."""

    model_config = ConfigDict(frozen=True)

    name: str
    datatype: Literal["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "FP16", "FP32", "FP64", "BYTES"]
    shape: list[int]


class ModelRegisteredV1(Event):
    """A new version of a model was registered, validated and stored."""

    EVENT_TYPE: ClassVar[str] = "registry.model-registered.v1"

    model_name: str
    version: int = Field(ge=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    dataset: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    training_window: TrainingWindow | None = None
    has_reference_stats: bool = False
    created_by: str
    created_at: AwareDatetime


class RolloutChangedV1(Event):
    """An alias of a model now points at another version (or at none).

    Published on a compacted topic keyed ``<model_name>/<alias>``, so the latest record per
    key is the current routing table.
    """

    EVENT_TYPE: ClassVar[str] = "registry.rollout-changed.v1"

    model_name: str
    alias: Alias
    version: int | None = Field(default=None, ge=1, description="None when the alias was removed.")
    previous_version: int | None = None
    weight: float | None = Field(default=None, ge=0, le=1, description="Canary traffic share, 0..1.")
    changed_by: str
    reason: str = ""
    changed_at: AwareDatetime

    def order(self) -> tuple[int, str, str]:
        """Where this change stands among the changes of its alias: change time (µs), then author, then version.

        Every reader of the rollout topic applies a record only when it is later in this order than the
        change it holds: the topic can carry an older record after a newer one, and two writers' clocks
        can stamp different changes alike, which then end the same way in any order.
        """
        micros = (self.changed_at - _EPOCH) // _MICROSECOND
        return micros, self.changed_by, "" if self.version is None else str(self.version)
