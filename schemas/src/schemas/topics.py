"""The topic catalogue: every topic Tributary uses, with its key, partitions and retention.

Services create the topics they touch from this catalogue at start-up, so the broker never
creates a topic by accident (``auto.create.topics.enable=false``). A topic that carries an
event is named exactly like its event type; its dead-letter topic is ``<topic>.dlq``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.dataset import DatasetSpecRegisteredV1
from schemas.deadletter import DeadLetterV1
from schemas.drift import DriftReportV1
from schemas.inference import (
    CanaryDecidedV1,
    InferenceCompletedV1,
    InferenceRequestedV1,
    PredictionEventV1,
)
from schemas.ingest import FeatureEventV1, LabelEventV1
from schemas.registry import ModelRegisteredV1, RolloutChangedV1
from schemas.training import PromotionDecidedV1, RetrainCommandV1, TrainingCompletedV1, TrainingFailedV1

DAY_MS = 24 * 60 * 60 * 1000


class TopicSpec(BaseModel):
    """One topic: what it carries, how it is keyed, partitioned and retained."""

    model_config = ConfigDict(frozen=True)

    name: str
    event_type: str | None = Field(description="Event type of enveloped values; None for raw producer JSON.")
    key: str = Field(description="What the record key is.")
    partitions: int = Field(ge=1)
    cleanup_policy: Literal["delete", "compact"] = "delete"
    retention_ms: int = Field(default=30 * DAY_MS, description="-1 keeps records forever.")
    dead_letter: str | None = Field(default=None, description="Dead-letter topic of this topic's consumers.")
    description: str = ""

    def config(self) -> dict[str, str]:
        """Topic-level broker configuration."""
        return {"cleanup.policy": self.cleanup_policy, "retention.ms": str(self.retention_ms)}


FEATURES = FeatureEventV1.EVENT_TYPE
LABELS = LabelEventV1.EVENT_TYPE
FEATURES_RAW = "ingest.feature-event-raw.v1"
LABELS_RAW = "ingest.label-event-raw.v1"
DATASET_SPECS = DatasetSpecRegisteredV1.EVENT_TYPE
PREDICTIONS = PredictionEventV1.EVENT_TYPE
DRIFT_REPORTS = DriftReportV1.EVENT_TYPE
RETRAIN_COMMANDS = RetrainCommandV1.EVENT_TYPE
MODEL_REGISTERED = ModelRegisteredV1.EVENT_TYPE
ROLLOUT_CHANGED = RolloutChangedV1.EVENT_TYPE
TRAINING_COMPLETED = TrainingCompletedV1.EVENT_TYPE
TRAINING_FAILED = TrainingFailedV1.EVENT_TYPE
PROMOTION_DECISIONS = PromotionDecidedV1.EVENT_TYPE
INFERENCE_REQUESTS = InferenceRequestedV1.EVENT_TYPE
INFERENCE_RESPONSES = InferenceCompletedV1.EVENT_TYPE
CANARY_DECISIONS = CanaryDecidedV1.EVENT_TYPE


def dlq(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return f"{topic}.dlq"


_MAIN: tuple[TopicSpec, ...] = (
    TopicSpec(
        name=FEATURES_RAW, event_type=None, key="entity id", partitions=3, dead_letter=dlq(FEATURES_RAW),
        description="Feature events as JSON, straight from producers; ingest validates them into "
        f"{FEATURES}.",
    ),
    TopicSpec(
        name=LABELS_RAW, event_type=None, key="entity id", partitions=3, dead_letter=dlq(LABELS_RAW),
        description=f"Label events as JSON, straight from producers; ingest validates them into {LABELS}.",
    ),
    TopicSpec(
        name=FEATURES, event_type=FEATURES, key="entity id", partitions=3, dead_letter=dlq(FEATURES),
        description="Validated feature events.",
    ),
    TopicSpec(
        name=LABELS, event_type=LABELS, key="entity id", partitions=3, dead_letter=dlq(LABELS),
        description="Validated label events.",
    ),
    TopicSpec(
        name=DATASET_SPECS, event_type=DATASET_SPECS, key="dataset name", partitions=1,
        cleanup_policy="compact", retention_ms=-1, dead_letter=dlq(DATASET_SPECS),
        description="Current spec of every dataset (compacted: the last record per dataset wins).",
    ),
    TopicSpec(
        name=PREDICTIONS, event_type=PREDICTIONS, key="entity id (request id when none)", partitions=3,
        dead_letter=dlq(PREDICTIONS), description="Every prediction served, for drift and label joins.",
    ),
    TopicSpec(
        name=DRIFT_REPORTS, event_type=DRIFT_REPORTS, key="dataset name", partitions=1,
        dead_letter=dlq(DRIFT_REPORTS), description="One report per window per dataset.",
    ),
    TopicSpec(
        name=RETRAIN_COMMANDS, event_type=RETRAIN_COMMANDS, key="model name", partitions=1,
        dead_letter=dlq(RETRAIN_COMMANDS), description="Requests to train a new model version.",
    ),
    TopicSpec(
        name=TRAINING_COMPLETED, event_type=TRAINING_COMPLETED, key="model name", partitions=1, retention_ms=-1,
        description="Every retrain command that produced a model (promoted, refused or blocked), with its "
        "exact training offsets; the trainer rebuilds its idempotency ledger from it.",
    ),
    TopicSpec(
        name=TRAINING_FAILED, event_type=TRAINING_FAILED, key="model name", partitions=1, retention_ms=-1,
        description="Every retrain command that ended without a model, with the reason.",
    ),
    TopicSpec(
        name=PROMOTION_DECISIONS, event_type=PROMOTION_DECISIONS, key="model name", partitions=1,
        retention_ms=-1, description="Every gate decision on a trained candidate, with each comparison.",
    ),
    TopicSpec(
        name=MODEL_REGISTERED, event_type=MODEL_REGISTERED, key="model name", partitions=1,
        retention_ms=-1, dead_letter=dlq(MODEL_REGISTERED), description="Every model version registered.",
    ),
    TopicSpec(
        name=ROLLOUT_CHANGED, event_type=ROLLOUT_CHANGED, key="<model name>/<alias>", partitions=1,
        cleanup_policy="compact", retention_ms=-1, dead_letter=dlq(ROLLOUT_CHANGED),
        description="Alias moves (compacted: the last record per model and alias is the routing table).",
    ),
    TopicSpec(
        name=INFERENCE_REQUESTS, event_type=INFERENCE_REQUESTS, key="entity id (request id when none)",
        partitions=3, dead_letter=dlq(INFERENCE_REQUESTS),
        description="Asynchronous prediction requests to the inference gateway.",
    ),
    TopicSpec(
        name=INFERENCE_RESPONSES, event_type=INFERENCE_RESPONSES, key="entity id (request id when none)",
        partitions=3, description=f"One answer per record of {INFERENCE_REQUESTS}, keyed like the request.",
    ),
    TopicSpec(
        name=CANARY_DECISIONS, event_type=CANARY_DECISIONS, key="model name", partitions=1, retention_ms=-1,
        description="Every decision of the automatic canary analysis, with its evidence (an audit trail).",
    ),
)

_DEAD_LETTERS: tuple[TopicSpec, ...] = tuple(
    TopicSpec(
        name=spec.dead_letter,
        event_type=DeadLetterV1.EVENT_TYPE,
        key="original key",
        partitions=1,
        retention_ms=90 * DAY_MS,
        description=f"Inputs refused on their way to or from {spec.name}, with the reason.",
    )
    for spec in _MAIN
    if spec.dead_letter
)

CATALOGUE: dict[str, TopicSpec] = {spec.name: spec for spec in (*_MAIN, *_DEAD_LETTERS)}
"""Every topic by name."""


def topic(name: str) -> TopicSpec:
    """The catalogue entry of ``name``.

    Raises:
        KeyError: the topic is not in the catalogue.

    """
    try:
        return CATALOGUE[name]
    except KeyError:
        raise KeyError(f"topic {name!r} is not in the catalogue (schemas/topics.py)") from None
