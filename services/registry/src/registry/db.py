"""ORM rows and the SQLAlchemy adapter of :class:`registry.store.ModelStore`.

Works on SQLite (the default, one file) and PostgreSQL (psycopg 3). Alembic owns the DDL
(:mod:`registry.migrations`); nothing here creates tables. Rows never leave this module: every
method returns :mod:`registry.domain` values.

Serialisation of changes: on PostgreSQL the model's row is locked (``SELECT ... FOR UPDATE``)
for the transaction; on SQLite every transaction starts with ``BEGIN IMMEDIATE``, which takes
the database's write lock up front. Either way two registrations never get the same number.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, cast

from schemas.registry import TensorSpec
from schemas.training import TrainingWindow
from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

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
    alias_etag,
)
from registry.errors import AliasChanged, AliasNotSet, Conflict, ModelNotFound, StorageError, VersionNotFound
from registry.names import Alias, check_alias
from registry.store import AliasEvents, ServingGuard, VersionEvents


class Base(DeclarativeBase):
    """Declarative base of the registry's tables (its metadata is what Alembic migrates)."""


class ModelRow(Base):
    """A registered model."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ModelVersionRow(Base):
    """One version of a model, with its artifact digest, signature and lineage."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version", name="uq_model_versions_model_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"))
    version: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    opset: Mapped[int] = mapped_column(Integer)
    inputs: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    outputs: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    metrics: Mapped[dict[str, float]] = mapped_column(JSON)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    dataset: Mapped[str | None] = mapped_column(String(128))
    training_window: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    reference_stats: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    code_version: Mapped[str] = mapped_column(String(256))
    description: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    serving_state: Mapped[str | None] = mapped_column(String(16), doc="loaded | failed; None before any load.")
    serving_reason: Mapped[str | None] = mapped_column(Text)
    serving_alias: Mapped[str | None] = mapped_column(String(16))
    serving_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    def to_domain(self, model_name: str) -> ModelVersion:
        """The domain value of this row."""
        return ModelVersion(
            model_name=model_name,
            version=self.version,
            sha256=self.sha256,
            size_bytes=self.size_bytes,
            opset=self.opset,
            inputs=[TensorSpec.model_validate(s) for s in self.inputs],
            outputs=[TensorSpec.model_validate(s) for s in self.outputs],
            metrics=dict(self.metrics),
            params=dict(self.params),
            dataset=self.dataset,
            training_window=(
                None if self.training_window is None else TrainingWindow.model_validate(self.training_window)
            ),
            reference_stats=self.reference_stats,
            code_version=self.code_version,
            description=self.description,
            created_by=self.created_by,
            created_at=_utc(self.created_at),
            serving=None if self.serving_state is None or self.serving_at is None else ServingStatus(
                state="failed" if self.serving_state == "failed" else "loaded", reason=self.serving_reason or "",
                alias=None if self.serving_alias is None else check_alias(self.serving_alias),
                at=_utc(self.serving_at)),
        )


class AliasRow(Base):
    """Where an alias of a model points now."""

    __tablename__ = "aliases"
    __table_args__ = (
        ForeignKeyConstraint(["model_id", "version"], ["model_versions.model_id", "model_versions.version"],
                             name="fk_aliases_model_version", ondelete="RESTRICT"),
    )

    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(16), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    weight: Mapped[float | None] = mapped_column(Float)
    changed_by: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AliasChangeRow(Base):
    """One recorded alias change (append-only audit log)."""

    __tablename__ = "alias_changes"
    __table_args__ = (Index("ix_alias_changes_model_alias", "model_id", "alias", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"))
    alias: Mapped[str] = mapped_column(String(16))
    version: Mapped[int | None] = mapped_column(Integer)
    previous_version: Mapped[int | None] = mapped_column(Integer)
    weight: Mapped[float | None] = mapped_column(Float)
    changed_by: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    def to_domain(self, model_name: str) -> AliasChange:
        """The domain value of this row."""
        return AliasChange(
            id=self.id,
            model_name=model_name,
            alias=check_alias(self.alias),
            version=self.version,
            previous_version=self.previous_version,
            weight=self.weight,
            changed_by=self.changed_by,
            reason=self.reason,
            changed_at=_utc(self.changed_at),
        )


class TokenRow(Base):
    """An API token, stored as the sha256 of its secret."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    roles: Mapped[str] = mapped_column(String(256), doc="Comma-separated role names.")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class OutboxRow(Base):
    """A Kafka record committed with the change it announces, published later by the drainer."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_pending", "published_at", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(String(512))
    value: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


def normalise_url(url: str) -> str:
    """``url`` with the psycopg 3 driver for PostgreSQL URLs.

    >>> normalise_url("postgresql://u@h/db")
    'postgresql+psycopg://u@h/db'
    >>> normalise_url("sqlite:///registry.db")
    'sqlite:///registry.db'
    """
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets foreign keys, WAL, a busy timeout and ``BEGIN IMMEDIATE``."""
    url = normalise_url(url)
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so "begin" below can use BEGIN IMMEDIATE.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class SqlModelStore:
    """:class:`registry.store.ModelStore` on SQLAlchemy 2 (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def _session(self) -> Iterator[Session]:
        """One transaction: commit on success, roll back on error, always close."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except IntegrityError as exc:
            session.rollback()
            raise Conflict(f"the change conflicts with a concurrent one, retry it ({exc.orig})") from exc
        except OperationalError as exc:
            session.rollback()
            raise StorageError(f"database error, retry later: {exc.orig}") from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    # -- models and versions ------------------------------------------------------------------

    def _model(self, session: Session, name: str, *, lock: bool = False) -> ModelRow:
        query = select(ModelRow).where(ModelRow.name == name)
        if lock:
            query = query.with_for_update()
        row = session.scalars(query).one_or_none()
        if row is None:
            raise ModelNotFound(f"model {name!r} is not registered; register a version to create it")
        return row

    def _version(self, session: Session, model: ModelRow, version: int) -> ModelVersionRow:
        row = session.scalars(
            select(ModelVersionRow).where(ModelVersionRow.model_id == model.id, ModelVersionRow.version == version)
        ).one_or_none()
        if row is None:
            raise VersionNotFound(f"model {model.name!r} has no version {version}; list its versions first")
        return row

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
        """See :meth:`registry.store.ModelStore.register_version`."""
        with self._session() as session:
            model = session.scalars(select(ModelRow).where(ModelRow.name == name).with_for_update()).one_or_none()
            if model is None:
                try:
                    with session.begin_nested():
                        session.add(ModelRow(name=name, created_by=created_by, created_at=created_at))
                except IntegrityError:
                    pass  # created concurrently by another registration: use theirs
                model = self._model(session, name, lock=True)
            latest = session.scalar(
                select(func.max(ModelVersionRow.version)).where(ModelVersionRow.model_id == model.id)
            )
            row = ModelVersionRow(
                model_id=model.id,
                version=(latest or 0) + 1,
                sha256=artifact.sha256,
                size_bytes=artifact.size_bytes,
                opset=artifact.opset,
                inputs=[s.model_dump(mode="json") for s in spec.inputs],
                outputs=[s.model_dump(mode="json") for s in spec.outputs],
                metrics=dict(spec.metrics),
                params=dict(spec.params),
                dataset=spec.dataset,
                training_window=None if spec.training_window is None else spec.training_window.model_dump(mode="json"),
                reference_stats=spec.reference_stats,
                code_version=spec.code_version,
                description=spec.description,
                created_by=created_by,
                created_at=created_at,
            )
            session.add(row)
            session.flush()
            version = row.to_domain(name)
            self._enqueue(session, events(version), created_at)
            return version

    def list_models(self) -> list[Model]:
        """See :meth:`registry.store.ModelStore.list_models`."""
        with self._session() as session:
            rows = session.scalars(select(ModelRow).order_by(ModelRow.name)).all()
            return [self._model_domain(session, row) for row in rows]

    def get_model(self, name: str) -> Model:
        """See :meth:`registry.store.ModelStore.get_model`."""
        with self._session() as session:
            return self._model_domain(session, self._model(session, name))

    def _model_domain(self, session: Session, row: ModelRow) -> Model:
        latest = session.scalar(select(func.max(ModelVersionRow.version)).where(ModelVersionRow.model_id == row.id))
        aliases = session.scalars(select(AliasRow).where(AliasRow.model_id == row.id).order_by(AliasRow.alias)).all()
        return Model(
            name=row.name,
            created_by=row.created_by,
            created_at=_utc(row.created_at),
            latest_version=latest,
            aliases={a.alias: self._alias_state(row.name, a) for a in aliases},
        )

    def list_versions(self, name: str) -> list[ModelVersion]:
        """See :meth:`registry.store.ModelStore.list_versions`."""
        with self._session() as session:
            model = self._model(session, name)
            rows = session.scalars(
                select(ModelVersionRow).where(ModelVersionRow.model_id == model.id).order_by(ModelVersionRow.version)
            ).all()
            return [r.to_domain(name) for r in rows]

    def referenced_artifacts(self) -> set[str]:
        """See :meth:`registry.store.ModelStore.referenced_artifacts`."""
        with self._session() as session:
            return set(session.scalars(select(ModelVersionRow.sha256).distinct()).all())

    def get_version(self, name: str, version: int) -> ModelVersion:
        """See :meth:`registry.store.ModelStore.get_version`."""
        with self._session() as session:
            return self._version(session, self._model(session, name), version).to_domain(name)

    # -- aliases --------------------------------------------------------------------------------

    def _serving(self, session: Session, model: ModelRow) -> dict[Alias, ModelVersion]:
        rows = session.execute(
            select(AliasRow.alias, ModelVersionRow)
            .join(
                ModelVersionRow,
                (ModelVersionRow.model_id == AliasRow.model_id) & (ModelVersionRow.version == AliasRow.version),
            )
            .where(AliasRow.model_id == model.id)
        ).all()
        return {check_alias(alias): row.to_domain(model.name) for alias, row in rows}

    def serving(self, name: str) -> dict[Alias, ModelVersion]:
        """See :meth:`registry.store.ModelStore.serving`."""
        with self._session() as session:
            return self._serving(session, self._model(session, name))

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
        """See :meth:`registry.store.ModelStore.move_alias`."""
        with self._session() as session:
            model = self._model(session, name, lock=True)
            current = session.get(AliasRow, (model.id, alias))
            if if_match is not None:
                now = alias_etag(None, None) if current is None else alias_etag(current.version, current.weight)
                if if_match not in ("*", now):
                    raise AliasChanged(f"alias {alias!r} of model {name!r} is now {now}, not {if_match} as the "
                                       "change expected (If-Match); read it again and decide anew")
            serving = self._serving(session, model)
            if version is None:
                if current is None:
                    raise AliasNotSet(f"alias {alias!r} of model {name!r} points at no version; nothing to remove")
                serving.pop(alias, None)
            else:
                serving[alias] = self._version(session, model, version).to_domain(name)
            if guard is not None:
                guard(serving)
            previous = None if current is None else current.version
            if version is None:
                session.delete(current)
            elif current is None:
                session.add(AliasRow(model_id=model.id, alias=alias, version=version, weight=weight,
                                     changed_by=changed_by, reason=reason, changed_at=changed_at))
            else:
                current.version, current.weight = version, weight
                current.changed_by, current.reason, current.changed_at = changed_by, reason, changed_at
            change_row = AliasChangeRow(model_id=model.id, alias=alias, version=version, previous_version=previous,
                                        weight=weight, changed_by=changed_by, reason=reason, changed_at=changed_at)
            session.add(change_row)
            session.flush()
            change = change_row.to_domain(name)
            self._enqueue(session, events(change), changed_at)
            return change

    def record_serving(self, name: str, outcomes: Mapping[int, ServingStatus]) -> None:
        """See :meth:`registry.store.ModelStore.record_serving`."""
        if not outcomes:
            return
        with self._session() as session:
            model = self._model(session, name)
            for version, status in outcomes.items():
                row = self._version(session, model, version)
                row.serving_state, row.serving_reason = status.state, status.reason
                row.serving_alias, row.serving_at = status.alias, status.at

    def get_alias(self, name: str, alias: Alias) -> AliasState:
        """See :meth:`registry.store.ModelStore.get_alias`."""
        with self._session() as session:
            model = self._model(session, name)
            row = session.get(AliasRow, (model.id, alias))
            if row is None:
                raise AliasNotSet(f"alias {alias!r} of model {name!r} points at no version")
            return self._alias_state(name, row)

    def alias_history(self, name: str, alias: Alias | None = None) -> list[AliasChange]:
        """See :meth:`registry.store.ModelStore.alias_history`."""
        with self._session() as session:
            model = self._model(session, name)
            query = select(AliasChangeRow).where(AliasChangeRow.model_id == model.id)
            if alias is not None:
                query = query.where(AliasChangeRow.alias == alias)
            return [r.to_domain(name) for r in session.scalars(query.order_by(AliasChangeRow.id)).all()]

    @staticmethod
    def _alias_state(name: str, row: AliasRow) -> AliasState:
        return AliasState(model_name=name, alias=check_alias(row.alias), version=row.version, weight=row.weight,
                          changed_by=row.changed_by, reason=row.reason, changed_at=_utc(row.changed_at))

    # -- tokens ---------------------------------------------------------------------------------

    def add_token(self, *, name: str, token_hash: str, roles: frozenset[Role], created_at: datetime) -> None:
        """See :meth:`registry.store.ModelStore.add_token`."""
        with self._session() as session:
            session.add(TokenRow(name=name, token_hash=token_hash, roles=",".join(sorted(roles)),
                                 created_at=created_at, revoked_at=None))

    def principal_for(self, token_hash: str) -> Principal | None:
        """See :meth:`registry.store.ModelStore.principal_for`."""
        with self._session() as session:
            row = session.scalars(
                select(TokenRow).where(TokenRow.token_hash == token_hash, TokenRow.revoked_at.is_(None))
            ).one_or_none()
            if row is None:
                return None
            return Principal(name=row.name, roles=frozenset(Role(r) for r in row.roles.split(",") if r))

    def revoke_tokens(self, name: str, at: datetime) -> int:
        """See :meth:`registry.store.ModelStore.revoke_tokens`."""
        with self._session() as session:
            result = session.execute(
                update(TokenRow).where(TokenRow.name == name, TokenRow.revoked_at.is_(None)).values(revoked_at=at)
            )
            return int(cast(Any, result).rowcount)

    # -- outbox ---------------------------------------------------------------------------------

    @staticmethod
    def _enqueue(session: Session, messages: Sequence[OutboxMessage], at: datetime) -> None:
        for message in messages:
            session.add(OutboxRow(topic=message.topic, key=message.key, value=message.value, created_at=at,
                                  published_at=None))

    def pending_messages(self, limit: int) -> list[PendingMessage]:
        """See :meth:`registry.store.ModelStore.pending_messages`."""
        with self._session() as session:
            rows = session.scalars(
                select(OutboxRow).where(OutboxRow.published_at.is_(None)).order_by(OutboxRow.id).limit(limit)
            ).all()
            return [PendingMessage(id=r.id, topic=r.topic, key=r.key, value=r.value, created_at=_utc(r.created_at))
                    for r in rows]

    def mark_published(self, ids: Sequence[int], at: datetime) -> None:
        """See :meth:`registry.store.ModelStore.mark_published`."""
        if not ids:
            return
        with self._session() as session:
            session.execute(update(OutboxRow).where(OutboxRow.id.in_(list(ids))).values(published_at=at))

    def outbox_backlog(self) -> int:
        """See :meth:`registry.store.ModelStore.outbox_backlog`."""
        with self._session() as session:
            return int(session.scalar(
                select(func.count()).select_from(OutboxRow).where(OutboxRow.published_at.is_(None))
            ) or 0)

    def ping(self) -> None:
        """See :meth:`registry.store.ModelStore.ping`."""
        with self._engine.connect() as conn:
            conn.execute(text("SELECT 1"))
