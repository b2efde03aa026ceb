"""The registry's core: register validated versions, move aliases, answer reads.

Transport-agnostic: the HTTP API (:mod:`registry.api`) and the CLI call the same methods.
Methods are synchronous (database, disk and onnxruntime work); async callers run them in a
worker thread.

Order of a registration, chosen so that a failure at any step leaves nothing registered:
stream the upload into a private temporary file (size-limited, hashed) → validate it →
move it under its digest in the artifact store → one database transaction adds the version
and its outbox event → wake the outbox drainer → write the Triton repository. A failure
before the transaction discards the upload; the Triton repository is derived state that
:meth:`RegistryService.sync_triton` rebuilds at any time.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import BinaryIO, NoReturn

from schemas.signing import ArtifactSignature

from registry import metrics
from registry.domain import (
    AliasChange,
    AliasState,
    ArtifactInfo,
    Model,
    ModelVersion,
    Principal,
    Role,
    ServingStatus,
    VersionSpec,
    alias_etag,
)
from registry.errors import (
    InvalidModel,
    InvalidRequest,
    NotAuthenticated,
    PermissionDenied,
    PromotionFailed,
    RegistryError,
    SignatureConflict,
    TritonError,
)
from registry.names import Alias, check_alias, check_model_name
from registry.outbox import model_registered, rollout_changed
from registry.sandbox import SandboxLimits, SandboxResult, validate_in_sandbox
from registry.signing import SigningKeys
from registry.storage import ArtifactStore
from registry.store import ModelStore
from registry.triton_repo import TritonControl, TritonRepository
from registry.validation import ValidatedModel, validate_model

log = logging.getLogger(__name__)

REVERT_ACTOR = "registry"
"""``changed_by`` of the alias changes the registry makes itself (moving an alias back after Triton
refused the version it was moved to)."""

TOKEN_PREFIX = "trb_"
"""Every token starts with this, so leaked tokens are easy to find in logs and repositories."""


def hash_token(token: str) -> str:
    """The stored form of ``token``: its sha256 (tokens are 256-bit random, so no salt is needed).

    >>> hash_token("trb_x")[:16]
    '5d3a822aba1d7ab7'
    """
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Limits:
    """What an upload may be."""

    max_artifact_bytes: int
    min_opset: int
    max_opset: int


@dataclass(frozen=True)
class EventTopics:
    """Where the registry publishes."""

    model_registered: str
    rollout_changed: str


def _noop() -> None:
    return None


class RegistryService:
    """Registry operations with authorisation, validation, audit and events.

    Args:
        store: models, versions, aliases, tokens, outbox.
        artifacts: the content-addressed artifact store.
        limits: upload size and opset range.
        topics: the event topics.
        triton_repo: the Triton model repository to maintain, if any.
        triton: Triton's model control API, if a Triton is configured.
        notify: called after every commit that added outbox records (wakes the drainer).
        clock: the current time (tests pass a fixed one).
        signing: trusted artifact-signing keys and whether uploads must be signed; None
            accepts unsigned uploads and refuses signed ones (nothing to verify them with).
        sandbox: validate uploads in a resource-limited child process (see
            :mod:`registry.sandbox`); None validates in this process (tests of the rules).
        preflight: before an alias move reloads a model that serves with a version new to it,
            test-load that version alone in Triton (see :meth:`_preflight`).

    """

    def __init__(
        self,
        *,
        store: ModelStore,
        artifacts: ArtifactStore,
        limits: Limits,
        topics: EventTopics,
        triton_repo: TritonRepository | None = None,
        triton: TritonControl | None = None,
        notify: Callable[[], None] = _noop,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        signing: SigningKeys | None = None,
        sandbox: SandboxLimits | None = None,
        preflight: bool = True,
    ) -> None:
        self.store = store
        self.sandbox = sandbox
        self.signing = signing or SigningKeys({}, required=False)
        self.artifacts = artifacts
        self.limits = limits
        self.topics = topics
        self.triton_repo = triton_repo
        self.triton = triton
        self.notify = notify
        self.clock = clock
        self.preflight = preflight and triton is not None and triton_repo is not None

    # -- tokens ---------------------------------------------------------------------------------

    def issue_token(self, name: str, roles: Iterable[Role]) -> str:
        """Create a token for ``name`` with ``roles``; return the secret (shown once, stored hashed).

        Raises:
            InvalidRequest: no roles, or an empty name.

        """
        role_set = frozenset(roles)
        if not name.strip() or len(name) > 128:
            raise InvalidRequest("token name must be 1-128 characters")
        if not role_set:
            raise InvalidRequest(f"a token needs at least one role: {', '.join(r.value for r in Role)}")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        self.store.add_token(name=name, token_hash=hash_token(token), roles=role_set, created_at=self.clock())
        return token

    def revoke_tokens(self, name: str) -> int:
        """Revoke every token of ``name``; return how many were active."""
        return self.store.revoke_tokens(name, self.clock())

    def authenticate(self, token: str | None) -> Principal:
        """The holder of ``token``.

        Raises:
            NotAuthenticated: no token, or an unknown or revoked one.

        """
        if not token:
            raise NotAuthenticated("this change needs a bearer token: send 'Authorization: Bearer <token>'")
        principal = self.store.principal_for(hash_token(token))
        if principal is None:
            raise NotAuthenticated("the bearer token is unknown or revoked; ask an operator for a new one")
        return principal

    @staticmethod
    def _require(actor: Principal, role: Role) -> None:
        if role not in actor.roles:
            raise PermissionDenied(
                f"{actor.name!r} may not do this: it needs the {role.value!r} role "
                f"(it has {', '.join(sorted(r.value for r in actor.roles)) or 'none'})"
            )

    # -- registration ---------------------------------------------------------------------------

    def register_version(
        self, *, name: str, spec: VersionSpec, artifact: Iterable[bytes], actor: Principal,
        signature: ArtifactSignature | None = None,
    ) -> ModelVersion:
        """Validate and store ``artifact`` as the next version of ``name`` (created when new).

        ``signature`` is checked against the sha256 of the bytes as received and the model name
        (see :mod:`registry.signing`) before anything is stored.

        Raises:
            PermissionDenied: ``actor`` is not a trainer.
            InvalidName: the model name is not allowed.
            ArtifactTooLarge: the artifact is over the size limit.
            InvalidModel: the artifact fails validation (including its subclasses
                OpsetNotAllowed and SignatureMismatch).
            SignatureRequired, ArtifactSignatureInvalid: unsigned where signatures are
                required, or a signature that does not verify.

        """
        self._require(actor, Role.TRAINER)
        check_model_name(name)
        staged = self.artifacts.stage(artifact, max_bytes=self.limits.max_artifact_bytes)
        try:
            if staged.size_bytes == 0:
                raise InvalidModel("artifact is empty; upload the ONNX file's bytes")
            try:
                signer = self.signing.check(name, staged.sha256, signature)
            except RegistryError as exc:
                log.warning("artifact signature refused", extra={
                    "model": name, "sha256": staged.sha256, "by": actor.name, "code": exc.code,
                    "key_id": signature.key_id if signature else None, "reason": str(exc)})
                raise
            validated: ValidatedModel | SandboxResult
            if self.sandbox is not None:
                validated = validate_in_sandbox(staged.path, declared=spec.signature,
                                                min_opset=self.limits.min_opset, max_opset=self.limits.max_opset,
                                                limits=self.sandbox)
            else:
                validated = validate_model(staged.path, declared=spec.signature, min_opset=self.limits.min_opset,
                                           max_opset=self.limits.max_opset)
            self.artifacts.commit(staged)
        except RegistryError as exc:
            self.artifacts.discard(staged)
            metrics.REFUSALS.labels(reason=exc.code).inc()
            raise
        except BaseException:
            self.artifacts.discard(staged)
            raise
        info = ArtifactInfo(sha256=staged.sha256, size_bytes=staged.size_bytes, opset=validated.opset)
        topic = self.topics.model_registered
        version = self.store.register_version(
            name=name, spec=spec, artifact=info, created_by=actor.name, created_at=self.clock(),
            events=lambda v: [model_registered(v, topic=topic)],
        )
        metrics.REGISTRATIONS.inc()
        self.notify()
        log.info("version registered", extra={"model": name, "version": version.version, "sha256": info.sha256,
                                              "by": actor.name, "signed_by": signer})
        self._sync_triton_quietly(name, reload=False)
        return version

    # -- aliases --------------------------------------------------------------------------------

    def set_alias(
        self, *, name: str, alias: str, version: int, weight: float | None, reason: str, actor: Principal,
        if_match: str | None = None,
    ) -> AliasChange:
        """Point ``alias`` of ``name`` at ``version``; ``weight`` (0..1] is the canary's traffic share.

        ``if_match``: change only if the alias's entity tag (:func:`registry.domain.alias_etag`)
        is this one (compare-and-set; ``AliasChanged`` otherwise).

        Raises:
            PermissionDenied: ``actor`` is not an operator.
            InvalidName: unknown alias or bad model name.
            InvalidRequest: no reason, or a weight where none belongs (or missing for canary).
            ModelNotFound, VersionNotFound: nothing to point at.
            SignatureConflict: the versions served together would differ in signature.

        """
        self._require(actor, Role.OPERATOR)
        check_model_name(name)
        checked = check_alias(alias)
        self._check_weight(checked, weight)
        return self._move(name=name, alias=checked, version=version, weight=weight, reason=reason, actor=actor,
                          if_match=if_match)

    def remove_alias(self, *, name: str, alias: str, reason: str, actor: Principal,
                     if_match: str | None = None) -> AliasChange:
        """Make ``alias`` point nowhere (for example to end a canary).

        Raises:
            PermissionDenied, InvalidName, InvalidRequest, ModelNotFound, AliasNotSet.

        """
        self._require(actor, Role.OPERATOR)
        check_model_name(name)
        return self._move(name=name, alias=check_alias(alias), version=None, weight=None, reason=reason,
                          actor=actor, if_match=if_match)

    def rollback(
        self, *, name: str, alias: str, reason: str, actor: Principal, to_version: int | None = None
    ) -> AliasChange:
        """Point ``alias`` back at an earlier version, recorded like any other change.

        Args:
            name: the model.
            alias: the alias to roll back.
            reason: why (recorded, prefixed with ``rollback:``).
            actor: who.
            to_version: the version to go back to; default the one the alias pointed at
                before its current version.

        Raises:
            InvalidRequest: the alias has no earlier version, or ``to_version`` is not earlier.
            PermissionDenied, InvalidName, ModelNotFound, AliasNotSet, VersionNotFound.

        """
        self._require(actor, Role.OPERATOR)
        check_model_name(name)
        checked = check_alias(alias)
        current = self.store.get_alias(name, checked)
        if to_version is None:
            to_version = self._previous_version(name, checked, current)
        if to_version >= current.version:
            raise InvalidRequest(
                f"rollback must go to an earlier version than {checked}'s current version {current.version}, "
                f"not {to_version}; use set alias to move forward"
            )
        return self._move(name=name, alias=checked, version=to_version, weight=current.weight,
                          reason=f"rollback: {reason.strip()}" if reason.strip() else "", actor=actor)

    def _previous_version(self, name: str, alias: Alias, current: AliasState) -> int:
        # The newest version, older than the current one, that the alias pointed at before.
        for change in reversed(self.store.alias_history(name, alias)):
            if change.version is not None and change.version < current.version:
                return change.version
        raise InvalidRequest(
            f"alias {alias!r} of {name!r} never pointed at a version earlier than {current.version}; "
            "give the version to roll back to explicitly"
        )

    @staticmethod
    def _check_weight(alias: Alias, weight: float | None) -> None:
        if alias == "canary":
            if weight is None or not 0 < weight <= 1:
                raise InvalidRequest("canary needs a traffic weight in (0, 1], for example 0.1 for 10%")
        elif weight is not None:
            raise InvalidRequest(f"only canary takes a traffic weight; {alias} gets all or mirrored traffic")

    def _move(
        self, *, name: str, alias: Alias, version: int | None, weight: float | None, reason: str, actor: Principal,
        if_match: str | None = None,
    ) -> AliasChange:
        if not reason.strip():
            raise InvalidRequest("say why: every alias change needs a reason, it goes into the audit log")
        if len(reason) > 4096:
            raise InvalidRequest("reason is longer than 4096 characters")
        topic = self.topics.rollout_changed
        before = {v.version for v in self.store.serving(name).values()} if self.triton is not None else set()
        change = self.store.move_alias(
            name=name, alias=alias, version=version, weight=weight, changed_by=actor.name, reason=reason.strip(),
            changed_at=self.clock(), events=lambda c: [rollout_changed(c, topic=topic)], guard=_one_signature,
            if_match=if_match,
        )
        metrics.ALIAS_CHANGES.labels(alias=alias).inc()
        self.notify()
        log.info("alias changed", extra={"model": name, "alias": alias, "version": version,
                                         "previous": change.previous_version, "by": actor.name})
        if self.preflight and before and change.version is not None and change.version not in before:
            # Versions serve: test-load the new one on its own first, so a version Triton refuses
            # never makes it reload (and so disturb) the versions serving.
            refused = self._preflight(name, change.version)
            if refused is not None:
                self._fail_promotion(change, refused)
        failed = self._sync_triton_quietly(name, reload=True, alias=alias)
        if failed is not None and change.version is not None and change.version in failed:
            self._fail_promotion(change, failed[change.version])
        return change

    def _fail_promotion(self, change: AliasChange, reason: str) -> NoReturn:
        """Mark ``change``'s version failed, move its alias back, raise PromotionFailed."""
        name, alias, version = change.model_name, change.alias, change.version
        assert version is not None
        self._record(name, {version: ServingStatus(state="failed", reason=reason[:4096], alias=alias,
                                                   at=self.clock())})
        reverted = self._revert(change, reason)
        raise PromotionFailed(
            f"Triton refused to load version {version} of {name!r}, so {alias} was {_described(reverted, change)}; "
            f"the version is marked failed (GET /v1/models/{name}/versions/{version}: serving). Triton said: {reason}")

    def _preflight(self, name: str, version: int) -> str | None:
        """Test-load ``version`` alone as Triton model ``_preflight-<name>``; Triton's reason when it refused.

        None when it loaded, or when Triton gave no verdict (unreachable, or its index does not
        show the version unavailable): the serving model's own load then decides, as without
        the test. The scratch model is unloaded and removed either way.
        """
        assert self.triton is not None and self.triton_repo is not None
        try:
            found = self.store.get_version(name, version)
            if not self.triton_repo.has_version(name, version):
                with self.artifacts.open(found.sha256) as f:
                    self.triton_repo.write_version(name, version, f)
            scratch = self.triton_repo.write_preflight(name, version, found.signature)
        except (RegistryError, OSError) as exc:
            log.error("version not test-loaded in Triton", extra={"model": name, "version": version,
                                                                  "error": str(exc)})
            return None
        try:
            self.triton.load(scratch)
            return None
        except TritonError as exc:
            try:
                state, why = self.triton.index(scratch).get(version, ("", ""))
            except TritonError as index_exc:
                log.error("Triton's repository index could not be read after a failed test load",
                          extra={"model": name, "error": str(index_exc), "load_error": str(exc)})
                return None
            return (why or str(exc)) if state == "UNAVAILABLE" else None
        finally:
            try:
                self.triton.unload(scratch)
            except TritonError as exc:
                log.warning("test-loaded model not unloaded", extra={"model": scratch, "error": str(exc)})
            self.triton_repo.remove_preflight(name)

    def _revert(self, change: AliasChange, reason: str) -> AliasChange | None:
        """Move ``change``'s alias back to where it pointed before (or remove it), then restore Triton.

        Compare-and-set on the alias still pointing where ``change`` left it: a newer move by
        someone else is not undone (None is returned). The revert is an alias change like any
        other: recorded in the history and published as ``registry.rollout-changed.v1``, so the
        gateways stop routing to the version.
        """
        name, alias = change.model_name, change.alias
        earlier = [c for c in self.store.alias_history(name, alias) if c.id < change.id]
        previous = earlier[-1] if earlier else None
        back_to = None if previous is None else previous.version
        weight = None if previous is None or back_to is None else previous.weight
        topic = self.topics.rollout_changed
        try:
            reverted = self.store.move_alias(
                name=name, alias=alias, version=back_to, weight=weight, changed_by=REVERT_ACTOR,
                reason=f"reverted: Triton refused to load version {change.version}: {reason}"[:4096],
                changed_at=self.clock(), events=lambda c: [rollout_changed(c, topic=topic)], guard=_one_signature,
                if_match=alias_etag(change.version, change.weight),
            )
        except RegistryError as exc:
            log.error("alias not moved back after Triton refused its version", extra={
                "model": name, "alias": alias, "version": change.version, "error": str(exc)})
            return None
        metrics.ALIAS_CHANGES.labels(alias=alias).inc()
        metrics.PROMOTIONS_FAILED.labels(alias=alias).inc()
        self.notify()
        log.error("Triton refused the version an alias moved to; alias moved back", extra={
            "model": name, "alias": alias, "version": change.version, "back_to": back_to, "reason": reason})
        self._restore_triton(name)
        return reverted

    def _restore_triton(self, name: str) -> None:
        """Write the restored serving set's config; load it only when Triton does not serve all of it.

        After a refused load Triton keeps serving the versions it had (it swaps versions in only
        when all of them loaded), so usually nothing needs loading and serving versions are not
        disturbed by a reload.
        """
        try:
            wanted = self.sync_triton(name, reload=False)
            if self.triton is None or not wanted:
                return
            states = self.triton.index(name)
            if all(states.get(v, ("", ""))[0] == "READY" for v in wanted):
                return
            self.triton.load(name)
        except (RegistryError, OSError) as exc:
            metrics.TRITON_FAILURES.inc()
            log.error("Triton not restored after a refused load", extra={"model": name, "error": str(exc)})

    # -- reads ----------------------------------------------------------------------------------

    def list_models(self) -> list[Model]:
        """Every model."""
        return self.store.list_models()

    def get_model(self, name: str) -> Model:
        """One model with its aliases. Raises InvalidName, ModelNotFound."""
        return self.store.get_model(check_model_name(name))

    def list_versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``. Raises InvalidName, ModelNotFound."""
        return self.store.list_versions(check_model_name(name))

    def get_version(self, name: str, version: int) -> ModelVersion:
        """One version. Raises InvalidName, ModelNotFound, VersionNotFound."""
        return self.store.get_version(check_model_name(name), version)

    def get_alias(self, name: str, alias: str) -> AliasState:
        """Where ``alias`` points. Raises InvalidName, ModelNotFound, AliasNotSet."""
        return self.store.get_alias(check_model_name(name), check_alias(alias))

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasChange]:
        """The audit log of one alias, or of all aliases of ``name``."""
        return self.store.alias_history(check_model_name(name), None if alias is None else check_alias(alias))

    def open_artifact(self, name: str, version: int) -> tuple[ModelVersion, BinaryIO]:
        """The version and its artifact bytes (the caller closes the stream)."""
        found = self.get_version(name, version)
        return found, self.artifacts.open(found.sha256)

    # -- Triton ---------------------------------------------------------------------------------

    def sync_triton(self, name: str, *, reload: bool = True) -> list[int]:
        """Bring ``name``'s directory in the Triton repository up to date; reload it in Triton.

        Writes each version's ``model.onnx`` that is missing, rewrites ``config.pbtxt`` for
        the versions the aliases point at (the newest version when none do) and, with a
        Triton configured and ``reload``, loads the model (or unloads it when nothing serves).

        Returns:
            The versions the aliases serve (what a load asks Triton for); empty when none do.

        Raises:
            TritonError: Triton refused.
            ArtifactMissing, StorageError: the repository could not be written.

        """
        if self.triton_repo is None:
            return []
        check_model_name(name)
        versions = self.store.list_versions(name)
        if not versions:
            return []
        for v in versions:
            if not self.triton_repo.has_version(name, v.version):
                with self.artifacts.open(v.sha256) as f:
                    self.triton_repo.write_version(name, v.version, f)
        serving = self.store.serving(name)
        chosen = sorted({v.version: v for v in serving.values()}.items()) or [(versions[-1].version, versions[-1])]
        self.triton_repo.write_config(name, chosen[-1][1].signature, versions=[n for n, _ in chosen])
        if self.triton is not None and reload:
            if serving:
                self.triton.load(name)
            else:
                self.triton.unload(name)
        return [n for n, _ in chosen] if serving else []

    def sync_all_triton(self) -> None:
        """:meth:`sync_triton` for every model; failures are logged, not raised (start-up)."""
        for model in self.store.list_models():
            self._sync_triton_quietly(model.name, reload=bool(model.aliases))

    def _sync_triton_quietly(self, name: str, *, reload: bool, alias: Alias | None = None) -> dict[int, str] | None:
        """:meth:`sync_triton`, recording each served version's load outcome; the versions Triton refused.

        Returns:
            ``{version: Triton's reason}`` for the versions Triton's repository index shows
            unavailable after it refused the load; None when the load succeeded, was not asked
            for, or failed for another reason (Triton unreachable, repository not written).

        """
        # The database is the source of truth and is already committed: a failed repository
        # write or Triton call must not undo or fail the change. It is logged and counted, and
        # POST /v1/models/{name}/triton/sync (or a restart) repairs it. Only a version Triton
        # itself declares unavailable is reported back (the caller moves its alias back).
        attempted: list[int] = []
        try:
            attempted = self.sync_triton(name, reload=reload)
        except TritonError as exc:
            metrics.TRITON_FAILURES.inc()
            log.error("Triton repository sync failed", extra={"model": name, "error": str(exc)})
            return self._refused(name, alias, exc)
        except (RegistryError, OSError) as exc:
            metrics.TRITON_FAILURES.inc()
            log.error("Triton repository sync failed", extra={"model": name, "error": str(exc)})
            return None
        if reload and attempted and self.triton is not None:
            loaded = ServingStatus(state="loaded", alias=alias, at=self.clock())
            self._record(name, dict.fromkeys(attempted, loaded))
        return None

    def _refused(self, name: str, alias: Alias | None, exc: TritonError) -> dict[int, str] | None:
        """After a failed load: the versions Triton's index shows unavailable, recorded as failed."""
        if self.triton is None or self.triton_repo is None:
            return None
        try:
            wanted = [v.version for v in self.store.serving(name).values()]
            states = self.triton.index(name)
        except (RegistryError, OSError) as index_exc:
            log.error("Triton's repository index could not be read after a failed load",
                      extra={"model": name, "error": str(index_exc), "load_error": str(exc)})
            return None
        refused = {v: (states[v][1] or str(exc))[:4096] for v in sorted(set(wanted))
                   if v in states and states[v][0] == "UNAVAILABLE"}
        if refused:
            at = self.clock()
            self._record(name, {v: ServingStatus(state="failed", reason=why, alias=alias, at=at)
                                for v, why in refused.items()})
        return refused or None

    def _record(self, name: str, outcomes: dict[int, ServingStatus]) -> None:
        try:
            self.store.record_serving(name, outcomes)
        except RegistryError as exc:
            log.error("Triton load outcome not recorded", extra={"model": name, "error": str(exc)})


def _described(reverted: AliasChange | None, change: AliasChange) -> str:
    if reverted is None:
        return "not moved back (it was changed again meanwhile)"
    if reverted.version is None:
        return "removed (it pointed at no version before)"
    return f"moved back to version {reverted.version}"


def _one_signature(serving: Mapping[Alias, ModelVersion]) -> None:
    """Refuse a serving set whose versions differ in signature: Triton gives them one config."""
    versions = sorted({v.version: v for v in serving.values()}.values(), key=lambda v: v.version)
    for other in versions[1:]:
        if other.signature != versions[0].signature:
            raise SignatureConflict(
                f"versions {versions[0].version} and {other.version} of {other.model_name!r} would serve together "
                "but have different signatures, and Triton serves all versions of a model with one config; "
                "remove the other aliases first, or register the new signature under a new model name"
            )
