"""Prediction events: one per answered request, for drift monitoring and label joins."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import AwareDatetime, Field

from schemas.envelope import Event, EventId


class PredictionEventV1(Event):
    """One prediction served (or shadowed) by the inference gateway."""

    EVENT_TYPE: ClassVar[str] = "inference.prediction-event.v1"

    request_id: EventId
    model_name: str
    model_version: int = Field(ge=1)
    route: Literal["champion", "canary", "shadow"]
    dataset: str | None = None
    entity_id: str | None = None
    features: dict[str, float | int | str | None] = Field(default_factory=dict)
    outputs: dict[str, list[float]] = Field(description="Output tensors by name, flattened.")
    prediction: float | int | str | None = Field(default=None, description="The decided class or value.")
    latency_ms: float = Field(ge=0)
    served_at: AwareDatetime
