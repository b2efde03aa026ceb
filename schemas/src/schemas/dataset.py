"""Dataset specs: which features a dataset has, their types and allowed values, and its label.

Ingest validates every feature and label event against the spec of its dataset; the trainer
builds its input layer from it and the drift service chooses its tests by feature type.
Specs are published on a compacted topic, keyed by dataset name, so any service can rebuild
the current spec of every dataset from Kafka alone.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from schemas.envelope import DatasetName, Event

FeatureName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")]
"""A feature name: a letter or ``_`` first, then letters, digits and ``_.-``; at most 128."""


class FeatureSpec(BaseModel):
    """One feature of a dataset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: FeatureName
    type: Literal["numeric", "categorical"]
    nullable: bool = Field(default=False, description="Whether the value may be null.")
    required: bool = Field(default=True, description="Whether every event must carry the feature.")
    min: float | None = Field(default=None, description="Smallest allowed value (numeric only).")
    max: float | None = Field(default=None, description="Largest allowed value (numeric only).")
    categories: list[str] | None = Field(
        default=None, description="Allowed values (categorical only); any string when absent."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.type == "categorical" and (self.min is not None or self.max is not None):
            raise ValueError(f"feature {self.name!r}: min/max apply to numeric features only")
        if self.type == "numeric" and self.categories is not None:
            raise ValueError(f"feature {self.name!r}: categories apply to categorical features only")
        for bound in (self.min, self.max):
            if bound is not None and not math.isfinite(bound):
                raise ValueError(f"feature {self.name!r}: bounds must be finite numbers")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"feature {self.name!r}: min {self.min} is greater than max {self.max}")
        if self.categories is not None:
            if not self.categories:
                raise ValueError(f"feature {self.name!r}: categories, when given, must not be empty")
            if len(set(self.categories)) != len(self.categories):
                raise ValueError(f"feature {self.name!r}: categories contain duplicates")
        return self


class LabelSpec(BaseModel):
    """The label of a dataset: a binary or multi-class class, or a regression target."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["binary", "multiclass", "regression"]
    classes: list[str | int] | None = Field(
        default=None,
        description="Allowed classes (multiclass: required; binary: defaults to 0/1 and booleans).",
    )
    min: float | None = Field(default=None, description="Smallest allowed target (regression only).")
    max: float | None = Field(default=None, description="Largest allowed target (regression only).")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.type == "multiclass" and not self.classes:
            raise ValueError("label: a multiclass label needs its classes")
        if self.type == "binary" and self.classes is not None and len(self.classes) != 2:
            raise ValueError("label: a binary label has exactly two classes")
        if self.type != "regression" and (self.min is not None or self.max is not None):
            raise ValueError("label: min/max apply to regression labels only")
        if self.type == "regression" and self.classes is not None:
            raise ValueError("label: classes apply to classification labels only")
        return self


class DatasetSpec(BaseModel):
    """The spec of one dataset: its features and its label."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: DatasetName
    description: str = ""
    features: list[FeatureSpec] = Field(min_length=1, max_length=2048)
    label: LabelSpec
    entity: str = Field(default="entity", description="What an entity id names (customer, account...).")

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        names = [f.name for f in self.features]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate feature names: {', '.join(duplicates)}")
        return self

    def feature(self, name: str) -> FeatureSpec | None:
        """The spec of feature ``name``, or None when the dataset has no such feature."""
        for spec in self.features:
            if spec.name == name:
                return spec
        return None


class DatasetSpecRegisteredV1(Event):
    """A dataset spec was registered or replaced; ``revision`` counts the replacements."""

    EVENT_TYPE: ClassVar[str] = "ingest.dataset-spec-registered.v1"

    spec: DatasetSpec
    revision: int = Field(ge=1)
    registered_by: str = "api"
