"""The persistence port of the registry: what the core needs from a database, nothing more.

The one implementation is :class:`registry.db.SqlModelStore` (SQLite or PostgreSQL). Every
change method runs in one transaction together with the outbox records it is given, so a
registration or an alias move is never committed without its event (see :mod:`registry.outbox`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Protocol

from registry.domain import (
    AliasChange,
    AliasState,
    ArtifactInfo,
    Model,
    ModelVersion,
    OutboxMessage,
    PendingMessage,
    Principal,
    Role,
    ServingStatus,
    VersionSpec,
)
from registry.names import Alias

VersionEvents = Callable[[ModelVersion], Sequence[OutboxMessage]]
"""Builds the outbox records of a version once its number is known."""

AliasEvents = Callable[[AliasChange], Sequence[OutboxMessage]]
"""Builds the outbox records of an alias change once it is recorded."""

ServingGuard = Callable[[Mapping[Alias, ModelVersion]], None]
"""Checks the aliases-to-versions map an alias move would produce; raises to refuse it."""


class ModelStore(Protocol):
    """Models, versions, aliases with history, tokens and the outbox.

    Change methods take the model's lock for the whole transaction, so version numbers are
    dense and alias moves of one model are serialised.
    """

    def register_version(
        self,
        *,
        name: str,
        spec: VersionSpec,
        artifact: ArtifactInfo,
        created_by: str,
        created_at: datetime,
        events: VersionEvents,
    ) -> ModelVersion:
        """Create the model when new, add the next version and its events; return the version."""
        ...

    def move_alias(
        self,
        *,
        name: str,
        alias: Alias,
        version: int | None,
        weight: float | None,
        changed_by: str,
        reason: str,
        changed_at: datetime,
        events: AliasEvents,
        guard: ServingGuard | None = None,
        if_match: str | None = None,
    ) -> AliasChange:
        """Point ``alias`` at ``version`` (remove it when None), record the change and its events.

        ``if_match`` (an :func:`registry.domain.alias_etag`) makes the change conditional on where
        the alias points, checked under the model's lock.

        Raises:
            AliasChanged: the alias no longer matches ``if_match``.
            ModelNotFound: no such model.
            VersionNotFound: no such version of the model.
            AliasNotSet: removing an alias that points nowhere.

        """
        ...

    def list_models(self) -> list[Model]:
        """Every model, by name."""
        ...

    def get_model(self, name: str) -> Model:
        """The model ``name``. Raises ModelNotFound."""
        ...

    def list_versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first. Raises ModelNotFound."""
        ...

    def referenced_artifacts(self) -> set[str]:
        """The sha256 of every artifact some version refers to."""
        ...

    def get_version(self, name: str, version: int) -> ModelVersion:
        """One version. Raises ModelNotFound or VersionNotFound."""
        ...

    def serving(self, name: str) -> dict[Alias, ModelVersion]:
        """The versions the aliases of ``name`` point at now. Raises ModelNotFound."""
        ...

    def record_serving(self, name: str, outcomes: Mapping[int, ServingStatus]) -> None:
        """Record the outcome of a Triton load for each version in ``outcomes`` (see ``ModelVersion.serving``).

        Raises:
            ModelNotFound, VersionNotFound.

        """
        ...

    def get_alias(self, name: str, alias: Alias) -> AliasState:
        """Where ``alias`` points. Raises ModelNotFound or AliasNotSet."""
        ...

    def alias_history(self, name: str, alias: Alias | None = None) -> list[AliasChange]:
        """Changes of one alias (or of all), oldest first. Raises ModelNotFound."""
        ...

    def add_token(self, *, name: str, token_hash: str, roles: frozenset[Role], created_at: datetime) -> None:
        """Store a token by its hash."""
        ...

    def principal_for(self, token_hash: str) -> Principal | None:
        """The holder of an unrevoked token with this hash, or None."""
        ...

    def revoke_tokens(self, name: str, at: datetime) -> int:
        """Revoke every token issued to ``name``; return how many were active."""
        ...

    def pending_messages(self, limit: int) -> list[PendingMessage]:
        """Up to ``limit`` unpublished outbox records, oldest first."""
        ...

    def mark_published(self, ids: Sequence[int], at: datetime) -> None:
        """Mark outbox records as published."""
        ...

    def outbox_backlog(self) -> int:
        """How many outbox records are not yet published."""
        ...

    def ping(self) -> None:
        """Round-trip to the database; raises when it is unreachable."""
        ...
