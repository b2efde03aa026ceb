"""Data events: feature vectors and (possibly late) labels for entities of a dataset."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import AwareDatetime, Field, StrictBool, StrictInt, StrictStr

from schemas.envelope import DatasetName, Event, EventId

FiniteFloat = Annotated[float, Field(allow_inf_nan=False, strict=True)]
"""A JSON number that is neither NaN nor an infinity."""

FeatureValue = StrictInt | FiniteFloat | StrictStr | None
"""A feature value: a finite number, a string (categorical) or null. Booleans are refused."""

LabelValue = StrictBool | StrictInt | FiniteFloat | StrictStr
"""A label: a class (boolean, integer or string) or a finite regression target."""

EntityId = Annotated[str, Field(min_length=1, max_length=256)]


class FeatureEventV1(Event):
    """The features observed for one entity at one time, optionally with its label."""

    EVENT_TYPE: ClassVar[str] = "ingest.feature-event.v1"

    event_id: EventId
    dataset: DatasetName
    entity_id: EntityId
    event_time: AwareDatetime
    features: dict[str, FeatureValue] = Field(max_length=2048)
    label: LabelValue | None = None
    schema_version: Literal[1] = 1


class LabelEventV1(Event):
    """The label of an entity, known later than its features (a default, a churn, a price)."""

    EVENT_TYPE: ClassVar[str] = "ingest.label-event.v1"

    event_id: EventId
    dataset: DatasetName
    entity_id: EntityId
    event_time: AwareDatetime
    label: LabelValue
    feature_event_id: EventId | None = Field(
        default=None, description="The feature event this label belongs to, when the producer knows it."
    )
    schema_version: Literal[1] = 1
