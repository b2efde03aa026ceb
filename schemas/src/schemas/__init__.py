"""Tributary's event contracts, shared by every service.

Each event is a frozen pydantic model whose class name ends in ``V<N>`` and whose
``EVENT_TYPE`` (``<domain>.<event>.v<N>``) is also the name of the topic that carries it.
Events travel inside an :class:`~schemas.envelope.Envelope`. Within a major version only
optional fields with defaults may be added; ``schemas/jsonschema/`` holds the committed JSON
Schema of every event and a test refuses breaking changes against it.
"""

from schemas.dataset import DatasetSpec, DatasetSpecRegisteredV1, FeatureSpec, LabelSpec
from schemas.deadletter import DeadLetterV1, Problem
from schemas.drift import DriftReportV1, FeatureDrift
from schemas.envelope import Envelope, Event, event_class, event_types
from schemas.inference import (
    CanaryDecidedV1,
    InferenceCompletedV1,
    InferenceRequestedV1,
    PredictionEventV1,
    RouteEvidence,
    TensorValue,
)
from schemas.ingest import FeatureEventV1, LabelEventV1
from schemas.registry import ModelRegisteredV1, RolloutChangedV1, TensorSpec
from schemas.training import (
    OffsetRange,
    PromotionDecidedV1,
    RetrainCommandV1,
    ServingCheck,
    SliceCheck,
    TrainingCompletedV1,
    TrainingFailedV1,
    TrainingWindow,
)

__all__ = [
    "CanaryDecidedV1",
    "DatasetSpec",
    "DatasetSpecRegisteredV1",
    "DeadLetterV1",
    "DriftReportV1",
    "Envelope",
    "Event",
    "FeatureDrift",
    "FeatureEventV1",
    "FeatureSpec",
    "InferenceCompletedV1",
    "InferenceRequestedV1",
    "LabelEventV1",
    "LabelSpec",
    "ModelRegisteredV1",
    "OffsetRange",
    "PredictionEventV1",
    "Problem",
    "PromotionDecidedV1",
    "RetrainCommandV1",
    "RolloutChangedV1",
    "RouteEvidence",
    "ServingCheck",
    "SliceCheck",
    "TensorSpec",
    "TensorValue",
    "TrainingCompletedV1",
    "TrainingFailedV1",
    "TrainingWindow",
    "event_class",
    "event_types",
]
