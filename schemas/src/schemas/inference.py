"""Inference events: predictions, asynchronous requests and answers, canary decisions.

Predictions feed drift monitoring and label joins; requests and answers are the Kafka form of
a prediction call; canary decisions are the audit trail of the automatic canary analysis.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

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


TensorDatatype = Literal["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
                         "FP16", "FP32", "FP64", "BYTES"]
"""A KServe v2 tensor datatype."""


class TensorValue(BaseModel):
    """One tensor in KServe v2 JSON form: its data flattened in row-major order."""

    model_config = ConfigDict(frozen=True)

    name: str
    datatype: TensorDatatype
    shape: list[int] = Field(description="Every dimension, batch included; no -1.")
    data: list[float | int | bool | str]


class InferenceRequestedV1(Event):
    """A caller asks for a prediction over Kafka; the answer is an ``InferenceCompletedV1``.

    Routed exactly like a REST or gRPC request: ``entity_id`` keeps one entity on one version.
    Either ``inputs`` (the model's tensors) or ``features`` (named values, merged with the online
    store like ``POST /v1/predict``) is given.
    """

    EVENT_TYPE: ClassVar[str] = "inference.inference-requested.v1"

    request_id: EventId
    model_name: str
    entity_id: str | None = None
    dataset: str | None = None
    inputs: list[TensorValue] = Field(default_factory=list)
    features: dict[str, float | int | str | None] = Field(default_factory=dict)
    requested_at: AwareDatetime


class InferenceCompletedV1(Event):
    """The answer to one ``InferenceRequestedV1``: outputs, or the reason there are none."""

    EVENT_TYPE: ClassVar[str] = "inference.inference-completed.v1"

    request_id: EventId
    model_name: str
    model_version: int | None = Field(default=None, ge=1, description="None when no version answered.")
    route: Literal["champion", "canary", "pinned"] | None = None
    entity_id: str | None = None
    outputs: list[TensorValue] = Field(default_factory=list)
    error: str | None = Field(default=None, description="Why the request failed; None on success.")
    status: int = Field(default=200, description="The HTTP status a REST caller would have received.")
    latency_ms: float = Field(ge=0)
    completed_at: AwareDatetime


class RouteEvidence(BaseModel):
    """What one route (champion or canary) did during an analysis window."""

    model_config = ConfigDict(frozen=True)

    version: int = Field(ge=1)
    requests: int = Field(ge=0)
    errors: int = Field(ge=0)
    error_rate: float = Field(ge=0)
    p99_latency_ms: float | None = None
    labelled: int = Field(default=0, ge=0)
    accuracy: float | None = None


class CanaryDecidedV1(Event):
    """The automatic canary analysis decided to hold, step up, promote or roll back a canary."""

    EVENT_TYPE: ClassVar[str] = "inference.canary-decided.v1"

    model_name: str
    champion: RouteEvidence
    canary: RouteEvidence
    action: Literal["hold", "step", "promote", "rollback"]
    weight_before: float = Field(ge=0, le=1)
    weight_after: float = Field(ge=0, le=1)
    divergence: float | None = Field(default=None, description="Mean absolute output difference, canary vs champion.")
    compared: int = Field(default=0, ge=0, description="Requests compared for the divergence.")
    reasons: list[str] = Field(default_factory=list)
    decided_by: str
    decided_at: AwareDatetime
