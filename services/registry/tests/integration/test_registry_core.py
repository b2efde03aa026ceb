"""The registry core over the real store, on SQLite and on the real PostgreSQL.

Registration, lineage, version numbering, aliases with history, rollback, tokens and roles,
the outbox written in the same transaction, and every refusal leaving nothing behind.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from registry.db import SqlModelStore
from registry.domain import Principal, Role, VersionSpec
from registry.errors import (
    AliasNotSet,
    ArtifactTooLarge,
    InvalidModel,
    InvalidName,
    InvalidRequest,
    ModelNotFound,
    NotAuthenticated,
    OpsetNotAllowed,
    PermissionDenied,
    SignatureConflict,
    SignatureMismatch,
    VersionNotFound,
)
from registry.service import RegistryService
from registry.storage import LocalArtifactStore
from registry.triton_repo import TritonRepository
from schemas.envelope import Envelope
from schemas.registry import ModelRegisteredV1, RolloutChangedV1

pytestmark = pytest.mark.integration

Onnx = Callable[..., bytes]
Spec = Callable[..., VersionSpec]


def _register(service: RegistryService, actor: Principal, data: bytes, spec: VersionSpec, name: str = "fraud") -> int:
    return service.register_version(name=name, spec=spec, artifact=[data], actor=actor).version


def test_registration_keeps_lineage_and_numbers_versions_per_model(
    service: RegistryService, trainer: Principal, make_onnx: Onnx, make_spec: Spec, artifacts: LocalArtifactStore
) -> None:
    data = make_onnx()
    v1 = service.register_version(name="fraud", spec=make_spec(), artifact=[data], actor=trainer)
    assert v1.version == 1
    assert v1.sha256 == __import__("hashlib").sha256(data).hexdigest()
    assert (v1.size_bytes, v1.opset, v1.created_by) == (len(data), 17, "trainer-ci")
    assert v1.metrics == {"auc": 0.91, "logloss": 0.2}
    assert v1.params == {"lr": 0.01, "epochs": 5, "optimizer": "adam"}
    assert v1.training_window is not None and v1.training_window.offsets[0].end_offset == 100
    assert v1.reference_stats == {"f0": {"mean": 0.1, "std": 1.0, "histogram": [1, 2, 3]}}
    assert v1.code_version == "abc1234" and v1.dataset == "fraud"
    assert v1.created_at.tzinfo is not None
    assert _register(service, trainer, make_onnx(seed=1), make_spec()) == 2
    assert _register(service, trainer, make_onnx(), make_spec(), name="churn") == 1
    assert service.get_version("fraud", 1) == v1
    assert [v.version for v in service.list_versions("fraud")] == [1, 2]
    assert [m.name for m in service.list_models()] == ["churn", "fraud"]
    assert service.get_model("fraud").latest_version == 2
    # Same bytes under two models: stored once.
    assert len([p for p in (artifacts.root / "sha256").rglob("*") if p.is_file()]) == 2


def test_registration_writes_its_event_in_the_outbox(
    service: RegistryService, store: SqlModelStore, trainer: Principal, make_onnx: Onnx, make_spec: Spec
) -> None:
    version = service.register_version(name="fraud", spec=make_spec(), artifact=[make_onnx()], actor=trainer)
    [message] = store.pending_messages(10)
    assert (message.topic, message.key) == ("registry.model-registered.v1", "fraud")
    envelope = Envelope[ModelRegisteredV1].model_validate_json(message.value)
    assert envelope.source == "registry"
    assert envelope.payload.version == 1 and envelope.payload.sha256 == version.sha256
    assert envelope.payload.has_reference_stats is True
    store.mark_published([message.id], version.created_at)
    assert store.pending_messages(10) == [] and store.outbox_backlog() == 0


def test_no_version_without_its_event_and_no_event_without_its_version(
    store: SqlModelStore, make_spec: Spec
) -> None:
    from datetime import UTC, datetime

    from registry.domain import ArtifactInfo

    def broken_events(_: object) -> list[object]:
        raise RuntimeError("event could not be built")

    with pytest.raises(RuntimeError):
        store.register_version(name="fraud", spec=make_spec(), artifact=ArtifactInfo(sha256="a" * 64, size_bytes=1,
                               opset=17), created_by="t", created_at=datetime.now(UTC), events=broken_events)  # type: ignore[arg-type]
    assert store.list_models() == []
    assert store.outbox_backlog() == 0


def _nothing_left(service: RegistryService, artifacts: LocalArtifactStore, store: SqlModelStore) -> None:
    assert store.list_models() == []
    assert store.outbox_backlog() == 0
    assert artifacts.temporary_files() == []
    assert not any(p.is_file() for p in (artifacts.root / "sha256").rglob("*"))


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("garbage", InvalidModel),
        ("empty", InvalidModel),
        ("opset", OpsetNotAllowed),
        ("mismatch", SignatureMismatch),
        ("oversized", ArtifactTooLarge),
    ],
)
def test_refused_uploads_leave_nothing_registered(
    service: RegistryService, store: SqlModelStore, artifacts: LocalArtifactStore, trainer: Principal,
    make_onnx: Onnx, make_spec: Spec, case: str, error: type[Exception],
) -> None:
    data, spec = make_onnx(), make_spec()
    if case == "garbage":
        data = b"\x00garbage" * 100
    elif case == "empty":
        data = b""
    elif case == "opset":
        data = make_onnx(opset=12)
    elif case == "mismatch":
        spec = make_spec(4)
    elif case == "oversized":
        data = data + b"\x00" * (1024 * 1024)
    with pytest.raises(error):
        service.register_version(name="fraud", spec=spec, artifact=[data], actor=trainer)
    _nothing_left(service, artifacts, store)


def test_refusal_after_earlier_versions_keeps_them_and_adds_nothing(
    service: RegistryService, store: SqlModelStore, trainer: Principal, make_onnx: Onnx, make_spec: Spec
) -> None:
    _register(service, trainer, make_onnx(), make_spec())
    with pytest.raises(SignatureMismatch):
        _register(service, trainer, make_onnx(seed=3), make_spec(5))
    assert [v.version for v in service.list_versions("fraud")] == [1]
    assert _register(service, trainer, make_onnx(seed=3), make_spec()) == 2
    assert store.outbox_backlog() == 2


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "a/b", "..", "%2e%2e", "a%2Fb", "Fraud", "x" * 129,
                                  "", "a b", "a\\b", "a\x00", "ünïcode"])
def test_bad_model_names_are_refused_before_anything_is_stored(
    service: RegistryService, store: SqlModelStore, artifacts: LocalArtifactStore, trainer: Principal,
    make_onnx: Onnx, make_spec: Spec, name: str, tmp_path: Path,
) -> None:
    with pytest.raises(InvalidName):
        service.register_version(name=name, spec=make_spec(), artifact=[make_onnx()], actor=trainer)
    _nothing_left(service, artifacts, store)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "registry.db" and not p.name.startswith(
        "registry.db-")) == ["artifacts", "triton"]
    assert list((tmp_path / "triton").iterdir()) == []


def test_roles_are_enforced(service: RegistryService, trainer: Principal, operator: Principal, make_onnx: Onnx,
                            make_spec: Spec) -> None:
    with pytest.raises(PermissionDenied, match="needs the 'trainer' role"):
        service.register_version(name="fraud", spec=make_spec(), artifact=[make_onnx()], actor=operator)
    _register(service, trainer, make_onnx(), make_spec())
    with pytest.raises(PermissionDenied, match="needs the 'operator' role"):
        service.set_alias(name="fraud", alias="champion", version=1, weight=None, reason="r", actor=trainer)
    with pytest.raises(PermissionDenied):
        service.rollback(name="fraud", alias="champion", reason="r", actor=trainer)
    with pytest.raises(PermissionDenied):
        service.remove_alias(name="fraud", alias="champion", reason="r", actor=trainer)


def test_tokens_are_stored_hashed_and_can_be_revoked(service: RegistryService, database_url: str) -> None:
    token = service.issue_token("ci", [Role.TRAINER, Role.OPERATOR])
    assert token.startswith("trb_") and len(token) > 40
    assert service.authenticate(token) == Principal(name="ci", roles=frozenset({Role.TRAINER, Role.OPERATOR}))
    if database_url.startswith("sqlite"):
        raw = Path(database_url.removeprefix("sqlite:///")).read_bytes()
        assert token.encode() not in raw
    with pytest.raises(NotAuthenticated):
        service.authenticate(None)
    with pytest.raises(NotAuthenticated):
        service.authenticate(token + "x")
    assert service.revoke_tokens("ci") == 1
    with pytest.raises(NotAuthenticated, match="unknown or revoked"):
        service.authenticate(token)
    with pytest.raises(InvalidRequest):
        service.issue_token("nobody", [])


def test_aliases_move_with_full_history_and_events(
    service: RegistryService, store: SqlModelStore, trainer: Principal, operator: Principal, make_onnx: Onnx,
    make_spec: Spec,
) -> None:
    for seed in range(3):
        _register(service, trainer, make_onnx(seed=seed), make_spec())
    service.set_alias(name="fraud", alias="champion", version=1, weight=None, reason="first", actor=operator)
    service.set_alias(name="fraud", alias="canary", version=2, weight=0.1, reason="try v2", actor=operator)
    service.set_alias(name="fraud", alias="shadow", version=3, weight=None, reason="mirror v3", actor=operator)
    change = service.set_alias(name="fraud", alias="champion", version=2, weight=None, reason="v2 wins",
                               actor=operator)
    assert (change.version, change.previous_version, change.changed_by, change.reason) == (2, 1, "alice", "v2 wins")
    removed = service.remove_alias(name="fraud", alias="canary", reason="promoted", actor=operator)
    assert (removed.version, removed.previous_version) == (None, 2)
    model = service.get_model("fraud")
    assert {a: s.version for a, s in model.aliases.items()} == {"champion": 2, "shadow": 3}
    assert service.get_alias("fraud", "champion").reason == "v2 wins"
    with pytest.raises(AliasNotSet):
        service.get_alias("fraud", "canary")
    history = service.alias_history("fraud")
    assert [(c.alias, c.previous_version, c.version) for c in history] == [
        ("champion", None, 1), ("canary", None, 2), ("shadow", None, 3), ("champion", 1, 2), ("canary", 2, None),
    ]
    assert [c.version for c in service.alias_history("fraud", "champion")] == [1, 2]
    rollouts = [Envelope[RolloutChangedV1].model_validate_json(m.value) for m in store.pending_messages(100)
                if m.topic == "registry.rollout-changed.v1"]
    assert [(e.payload.alias, e.payload.version, e.payload.weight) for e in rollouts] == [
        ("champion", 1, None), ("canary", 2, 0.1), ("shadow", 3, None), ("champion", 2, None), ("canary", None, None),
    ]
    keys = [m.key for m in store.pending_messages(100) if m.topic == "registry.rollout-changed.v1"]
    assert keys[0] == "fraud/champion" and keys[1] == "fraud/canary"


def test_rollback_points_at_the_earlier_version_and_is_recorded(
    service: RegistryService, trainer: Principal, operator: Principal, make_onnx: Onnx, make_spec: Spec
) -> None:
    for seed in range(3):
        _register(service, trainer, make_onnx(seed=seed), make_spec())
    for v in (1, 2, 3):
        service.set_alias(name="fraud", alias="champion", version=v, weight=None, reason=f"ship v{v}", actor=operator)
    change = service.rollback(name="fraud", alias="champion", reason="latency regression", actor=operator)
    assert (change.previous_version, change.version, change.reason) == (3, 2, "rollback: latency regression")
    change = service.rollback(name="fraud", alias="champion", reason="still bad", actor=operator)
    assert (change.previous_version, change.version) == (2, 1)
    with pytest.raises(InvalidRequest, match="never pointed at a version earlier"):
        service.rollback(name="fraud", alias="champion", reason="again", actor=operator)
    service.set_alias(name="fraud", alias="champion", version=3, weight=None, reason="fixed", actor=operator)
    explicit = service.rollback(name="fraud", alias="champion", reason="explicit", actor=operator, to_version=1)
    assert explicit.version == 1
    with pytest.raises(InvalidRequest, match="earlier version"):
        service.rollback(name="fraud", alias="champion", reason="forward?", actor=operator, to_version=3)
    assert len(service.alias_history("fraud", "champion")) == 7


def test_canary_keeps_its_weight_on_rollback(
    service: RegistryService, trainer: Principal, operator: Principal, make_onnx: Onnx, make_spec: Spec
) -> None:
    for seed in range(2):
        _register(service, trainer, make_onnx(seed=seed), make_spec())
    service.set_alias(name="fraud", alias="canary", version=1, weight=0.05, reason="a", actor=operator)
    service.set_alias(name="fraud", alias="canary", version=2, weight=0.2, reason="b", actor=operator)
    assert service.rollback(name="fraud", alias="canary", reason="c", actor=operator).weight == 0.2


@pytest.mark.parametrize(
    ("alias", "version", "weight", "reason", "error"),
    [
        ("champion", 9, None, "r", VersionNotFound),
        ("captain", 1, None, "r", InvalidName),
        ("../champion", 1, None, "r", InvalidName),
        ("champion", 1, 0.5, "r", InvalidRequest),
        ("canary", 1, None, "r", InvalidRequest),
        ("canary", 1, 0.0, "r", InvalidRequest),
        ("canary", 1, 1.5, "r", InvalidRequest),
        ("champion", 1, None, "   ", InvalidRequest),
    ],
)
def test_alias_refusals_change_nothing(
    service: RegistryService, store: SqlModelStore, trainer: Principal, operator: Principal, make_onnx: Onnx,
    make_spec: Spec, alias: str, version: int, weight: float | None, reason: str, error: type[Exception],
) -> None:
    _register(service, trainer, make_onnx(), make_spec())
    with pytest.raises(error):
        service.set_alias(name="fraud", alias=alias, version=version, weight=weight, reason=reason, actor=operator)
    assert service.alias_history("fraud") == [] and service.get_model("fraud").aliases == {}
    assert store.outbox_backlog() == 1


def test_unknown_model_and_alias(service: RegistryService, operator: Principal) -> None:
    with pytest.raises(ModelNotFound):
        service.set_alias(name="ghost", alias="champion", version=1, weight=None, reason="r", actor=operator)
    with pytest.raises(ModelNotFound):
        service.get_version("ghost", 1)
    with pytest.raises(ModelNotFound):
        service.remove_alias(name="ghost", alias="champion", reason="r", actor=operator)


def test_removing_an_unset_alias_is_refused(
    service: RegistryService, trainer: Principal, operator: Principal, make_onnx: Onnx, make_spec: Spec
) -> None:
    _register(service, trainer, make_onnx(), make_spec())
    with pytest.raises(AliasNotSet):
        service.remove_alias(name="fraud", alias="shadow", reason="r", actor=operator)


def test_versions_served_together_must_share_a_signature(
    service: RegistryService, trainer: Principal, operator: Principal, make_onnx: Onnx, make_spec: Spec
) -> None:
    _register(service, trainer, make_onnx(3), make_spec(3))
    _register(service, trainer, make_onnx(5), make_spec(5))
    service.set_alias(name="fraud", alias="champion", version=1, weight=None, reason="r", actor=operator)
    with pytest.raises(SignatureConflict, match="different signatures"):
        service.set_alias(name="fraud", alias="canary", version=2, weight=0.1, reason="r", actor=operator)
    # Moving the only alias to the new signature is fine.
    service.set_alias(name="fraud", alias="champion", version=2, weight=None, reason="new features", actor=operator)


def test_concurrent_registrations_get_distinct_dense_numbers(
    service: RegistryService, trainer: Principal, make_onnx: Onnx, make_spec: Spec
) -> None:
    blobs = [make_onnx(seed=i) for i in range(6)]
    errors: list[BaseException] = []

    def register(data: bytes) -> None:
        try:
            service.register_version(name="fraud", spec=make_spec(), artifact=[data], actor=trainer)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(b,)) for b in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [v.version for v in service.list_versions("fraud")] == [1, 2, 3, 4, 5, 6]


def test_triton_repository_follows_registrations_and_aliases(
    service: RegistryService, triton_repo: TritonRepository, trainer: Principal, operator: Principal,
    make_onnx: Onnx, make_spec: Spec,
) -> None:
    blobs = [make_onnx(seed=i) for i in range(3)]
    for data in blobs:
        _register(service, trainer, data, make_spec())
    root = triton_repo.root / "fraud"
    for i, data in enumerate(blobs, start=1):
        assert (root / str(i) / "model.onnx").read_bytes() == data
    config = (root / "config.pbtxt").read_text()
    assert "versions: [3]" in config and 'platform: "onnxruntime_onnx"' in config
    assert "max_batch_size: 16" in config and "max_queue_delay_microseconds: 500" in config
    service.set_alias(name="fraud", alias="champion", version=1, weight=None, reason="r", actor=operator)
    service.set_alias(name="fraud", alias="canary", version=2, weight=0.3, reason="r", actor=operator)
    assert "versions: [1, 2]" in (root / "config.pbtxt").read_text()
    service.remove_alias(name="fraud", alias="canary", reason="r", actor=operator)
    assert "versions: [1]" in (root / "config.pbtxt").read_text()
    # Derived state: deleting it and syncing restores it.
    (root / "2" / "model.onnx").chmod(0o644)
    (root / "2" / "model.onnx").unlink()
    service.sync_triton("fraud")
    assert (root / "2" / "model.onnx").read_bytes() == blobs[1]


def test_artifact_download_returns_the_registered_bytes(
    service: RegistryService, trainer: Principal, make_onnx: Onnx, make_spec: Spec
) -> None:
    data = make_onnx()
    _register(service, trainer, data, make_spec())
    version, stream = service.open_artifact("fraud", 1)
    with stream:
        assert stream.read() == data
    assert version.size_bytes == len(data)


def test_upload_is_read_in_chunks(service: RegistryService, trainer: Principal, make_onnx: Onnx,
                                  make_spec: Spec) -> None:
    from registry.storage import read_chunks

    data = make_onnx()
    version = service.register_version(name="fraud", spec=make_spec(), artifact=read_chunks(io.BytesIO(data), 7),
                                       actor=trainer)
    assert version.size_bytes == len(data)
    assert json.loads(version.model_dump_json())["model_name"] == "fraud"


def test_migrations_match_the_orm_and_downgrade_cleanly(database_url: str) -> None:
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from registry.db import Base, make_engine
    from registry.migrations import alembic_config, upgrade_to_head
    from sqlalchemy import inspect

    upgrade_to_head(database_url)
    upgrade_to_head(database_url)  # idempotent
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        command.downgrade(alembic_config(database_url), "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade_to_head(database_url)
        assert {"models", "model_versions", "aliases", "alias_changes", "tokens", "outbox"} <= set(
            inspect(engine).get_table_names())
    finally:
        engine.dispose()
