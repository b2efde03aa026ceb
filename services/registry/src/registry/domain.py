"""The registry's own vocabulary: models, versions, aliases, principals, outbox messages.

These are plain frozen values shared by the core, the store and the API; they are neither ORM
rows (see :mod:`registry.db`) nor wire events (see :mod:`schemas.registry`).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from schemas.registry import TensorSpec
from schemas.training import TrainingWindow

from registry.names import Alias

JsonScalar = float | int | str | bool | None


class Role(enum.StrEnum):
    """What a token may change. Reads need no token."""

    TRAINER = "trainer"
    """May register new model versions."""

    OPERATOR = "operator"
    """May move, remove and roll back aliases."""


class Principal(BaseModel):
    """Who makes a request: the name a token was issued to, and its roles."""

    model_config = ConfigDict(frozen=True)

    name: str
    roles: frozenset[Role]


class Signature(BaseModel):
    """The inputs and outputs of a model, in graph order."""

    model_config = ConfigDict(frozen=True)

    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)


class VersionSpec(BaseModel):
    """Everything a trainer declares about a new version besides its bytes.

    The signature is checked against the graph; the rest is lineage that the registry keeps
    as given.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    inputs: list[TensorSpec] = Field(min_length=1, max_length=1024)
    outputs: list[TensorSpec] = Field(min_length=1, max_length=1024)
    metrics: dict[str, float] = Field(default_factory=dict)
    params: dict[str, JsonScalar] = Field(default_factory=dict, description="Hyper-parameters.")
    dataset: str | None = Field(default=None, max_length=128)
    training_window: TrainingWindow | None = None
    reference_stats: dict[str, Any] | None = Field(
        default=None, description="Per-feature reference statistics the drift detectors compare against."
    )
    code_version: str = Field(default="", max_length=256, description="Commit or build of the training code.")
    description: str = Field(default="", max_length=4096)

    @property
    def signature(self) -> Signature:
        """The declared inputs and outputs."""
        return Signature(inputs=self.inputs, outputs=self.outputs)


class ArtifactInfo(BaseModel):
    """A stored artifact: its digest and size, and the opset read from it."""

    model_config = ConfigDict(frozen=True)

    sha256: str
    size_bytes: int
    opset: int


class ServingStatus(BaseModel):
    """The outcome of the last Triton load that included a version.

    ``failed`` is a failed promotion: an alias was moved to the version, Triton refused to load
    it, and the registry moved the alias back (see ``RegistryService``). ``loaded``: the last
    load that included the version succeeded (the version may have left the serving set since).
    """

    model_config = ConfigDict(frozen=True)

    state: Literal["loaded", "failed"] = Field(description="Outcome of the last Triton load including the version.")
    reason: str = Field(default="", max_length=4096,
                        description="Triton's own words when the load failed; empty when it loaded.")
    alias: Alias | None = Field(default=None, description="The alias whose move asked for the load.")
    at: AwareDatetime = Field(description="When the load was attempted.")


class ModelVersion(BaseModel):
    """One registered, validated version of a model."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    model_name: str
    version: int
    sha256: str
    size_bytes: int
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metrics: dict[str, float]
    params: dict[str, JsonScalar]
    dataset: str | None
    training_window: TrainingWindow | None
    reference_stats: dict[str, Any] | None
    code_version: str
    description: str
    created_by: str
    created_at: AwareDatetime
    serving: ServingStatus | None = Field(
        default=None, description="Outcome of the last Triton load that included this version; null before any "
                                  "(or without a Triton configured). state `failed` is a failed promotion.")

    @property
    def signature(self) -> Signature:
        """Inputs and outputs."""
        return Signature(inputs=self.inputs, outputs=self.outputs)


def alias_etag(version: int | None, weight: float | None) -> str:
    """The entity tag of an alias's target: ``"none"``, ``"3"`` or, for a weighted canary, ``"3;w=0.25"``.

    Sent as ``ETag`` by ``GET .../aliases/{alias}`` and compared with ``If-Match`` by the alias
    changes, so a writer can change an alias only if it still points where the writer last saw it.
    """
    if version is None:
        return '"none"'
    return f'"{version};w={weight!r}"' if weight is not None else f'"{version}"'


class AliasState(BaseModel):
    """Where an alias points now."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    model_name: str
    alias: Alias
    version: int
    weight: float | None
    changed_by: str
    reason: str
    changed_at: AwareDatetime

    @property
    def etag(self) -> str:
        """See :func:`alias_etag`."""
        return alias_etag(self.version, self.weight)


class AliasChange(BaseModel):
    """One entry of an alias's history: who moved it, from where to where, when and why."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    id: int
    model_name: str
    alias: Alias
    version: int | None = Field(description="None when the alias was removed.")
    previous_version: int | None
    weight: float | None
    changed_by: str
    reason: str
    changed_at: AwareDatetime


class Model(BaseModel):
    """A registered model: its name, how many versions it has and its aliases."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    name: str
    created_by: str
    created_at: AwareDatetime
    latest_version: int | None
    aliases: dict[str, AliasState]


class OutboxMessage(BaseModel):
    """One Kafka record waiting in the outbox, already encoded."""

    model_config = ConfigDict(frozen=True)

    topic: str
    key: str
    value: bytes


class PendingMessage(OutboxMessage):
    """An outbox record that is not yet published, with its position in the outbox."""

    id: int
    created_at: datetime
