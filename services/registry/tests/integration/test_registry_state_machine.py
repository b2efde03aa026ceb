"""The registry's core as a Hypothesis state machine (reliability plan B2), on a real SQLite file.

Random sequences of uploads (valid and truncated models), alias moves (valid and invalid
versions and weights), removals, rollbacks and restarts of the registry in process (a new
engine, store and service over the same files) run against a model of what the registry must
hold. After every step:

- every alias of every model points where the model says, with the weight it says (a canary's
  weight in (0, 1], none for the others), or at nothing (``AliasNotSet``);
- every version's artifact reads back with the sha256 recorded for it, which is the sha256 of
  the bytes uploaded; versions are numbered 1, 2, ... per model with no gap, refused uploads
  leave no version and no staged file;
- the outbox holds exactly one event per version and per alias change (none published here);
- a rollback only ever goes to an earlier version than the alias's current one.

The registry has no version deletion or archival (versions are immutable), so the plan's
"deleted versions 404" does not apply, and an operator may point the champion at any version
explicitly, so "prod only moves forward unless rolled back" is checked as "a rollback moves
back". The suite runs 60 sequences of up to 25 steps; the plan's 2,000 sequences of 50 steps:
``TRIBUTARY_STATE_MACHINE_EXAMPLES=2000 TRIBUTARY_STATE_MACHINE_STEPS=50`` (not timed; the suite's
run takes 20-35 s, so about an hour by extrapolation).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from registry.db import SqlModelStore, make_engine
from registry.domain import Principal, Role
from registry.errors import AliasNotSet, InvalidModel, InvalidRequest, ModelNotFound, VersionNotFound
from registry.migrations import upgrade_to_head
from registry.service import EventTopics, Limits, RegistryService
from registry.storage import LocalArtifactStore
from registry.triton_repo import TritonRepository

from services.registry.tests.conftest import linear_onnx, linear_spec

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("TRIBUTARY_STATE_MACHINE_EXAMPLES", "60"))
STEPS = int(os.environ.get("TRIBUTARY_STATE_MACHINE_STEPS", "25"))

TRAINER = Principal(name="trainer-sm", roles=frozenset({Role.TRAINER}))
OPERATOR = Principal(name="operator-sm", roles=frozenset({Role.OPERATOR}))
MODELS = st.sampled_from(["fraud", "fraud", "fraud", "churn"])
ALIASES = st.sampled_from(["champion", "champion", "canary", "shadow"])  # champion most: long histories
MODEL_BYTES = [linear_onnx(seed=seed) for seed in range(3)]


class RegistryMachine(RuleBasedStateMachine):
    """One registry over its own SQLite file, artifact folder and Triton repository."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="registry-state-"))
        self.url = f"sqlite:///{self.dir / 'registry.db'}"
        upgrade_to_head(self.url)
        self._open()
        self.versions: dict[str, list[str]] = {}                 # model -> sha256 of version i + 1
        self.aliases: dict[tuple[str, str], tuple[int, float | None]] = {}
        self.pointed: dict[tuple[str, str], list[int]] = {}      # versions an alias was moved to, in order
        self.events = 0

    def _open(self) -> None:
        self.engine = make_engine(self.url)
        self.artifacts = LocalArtifactStore(self.dir / "artifacts")
        self.service = RegistryService(
            store=SqlModelStore(self.engine), artifacts=self.artifacts,
            limits=Limits(max_artifact_bytes=1024 * 1024, min_opset=13, max_opset=21),
            topics=EventTopics(model_registered="registry.model-registered.v1",
                               rollout_changed="registry.rollout-changed.v1"),
            triton_repo=TritonRepository(self.dir / "triton", max_batch_size=16, max_queue_delay_us=500),
        )

    def teardown(self) -> None:
        self.engine.dispose()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _exists(self, model: str, version: int) -> bool:
        return 1 <= version <= len(self.versions.get(model, []))

    def _moved(self, model: str, alias: str, version: int, weight: float | None) -> None:
        self.aliases[(model, alias)] = (version, weight)
        self.pointed.setdefault((model, alias), []).append(version)
        self.events += 1

    # -- rules ----------------------------------------------------------------------------------

    @initialize(count=st.integers(0, 3))
    def seed(self, count: int) -> None:
        """Start with up to three versions of ``fraud``, so that alias moves find versions early."""
        for which in range(count):
            self.upload("fraud", which % len(MODEL_BYTES), truncate=False)

    @rule(model=MODELS, which=st.integers(0, len(MODEL_BYTES) - 1), truncate=st.booleans())
    def upload(self, model: str, which: int, truncate: bool) -> None:
        data = MODEL_BYTES[which][:-9] if truncate else MODEL_BYTES[which]
        try:
            version = self.service.register_version(name=model, spec=linear_spec(), artifact=[data], actor=TRAINER)
        except InvalidModel:
            assert truncate, "a valid model was refused"
            return
        assert not truncate, "a truncated model was registered"
        shas = self.versions.setdefault(model, [])
        shas.append(hashlib.sha256(data).hexdigest())
        assert version.version == len(shas)
        assert version.sha256 == shas[-1]
        self.events += 1

    @rule(data=st.data(), model=MODELS, alias=ALIASES)
    def move(self, data: st.DataObject, model: str, alias: str) -> None:
        n = len(self.versions.get(model, []))
        # Mostly existing versions and valid weights, so that histories (and rollbacks) get long.
        if n and data.draw(st.integers(0, 4), label="existing version") > 0:
            version = data.draw(st.integers(1, n), label="version")
        else:
            version = data.draw(st.sampled_from([0, n + 1]), label="missing version")
        valid: list[float | None] = [0.05, 0.5, 1.0] if alias == "canary" else [None]
        invalid: list[float | None] = [None, 0.0, 1.5] if alias == "canary" else [0.5]
        weight = data.draw(st.sampled_from(valid + valid + invalid), label="weight")
        weight_ok = weight in valid
        try:
            self.service.set_alias(name=model, alias=alias, version=version, weight=weight, reason="state machine",
                                   actor=OPERATOR)
        except InvalidRequest:
            assert not weight_ok, "a valid weight was refused"
            return
        except (ModelNotFound, VersionNotFound):
            assert not self._exists(model, version), "a move to an existing version was refused"
            return
        assert weight_ok and self._exists(model, version)
        self._moved(model, alias, version, weight)

    @rule(model=MODELS, alias=ALIASES)
    def promote_newest(self, model: str, alias: str) -> None:
        """The usual flow: the newest version becomes the alias (a later rollback has somewhere to go)."""
        n = len(self.versions.get(model, []))
        if not n:
            return
        weight = 0.25 if alias == "canary" else None
        self.service.set_alias(name=model, alias=alias, version=n, weight=weight, reason="newest", actor=OPERATOR)
        self._moved(model, alias, n, weight)

    @rule(model=MODELS, alias=ALIASES)
    def remove(self, model: str, alias: str) -> None:
        try:
            self.service.remove_alias(name=model, alias=alias, reason="state machine", actor=OPERATOR)
        except (AliasNotSet, ModelNotFound):
            assert (model, alias) not in self.aliases, "a set alias could not be removed"
            return
        assert (model, alias) in self.aliases, "an unset alias was removed"
        del self.aliases[(model, alias)]
        self.events += 1

    @rule(model=MODELS, alias=ALIASES)
    def roll_back(self, model: str, alias: str) -> None:
        current = self.aliases.get((model, alias))
        earlier = ([v for v in self.pointed.get((model, alias), []) if current is not None and v < current[0]]
                   if current is not None else [])
        try:
            change = self.service.rollback(name=model, alias=alias, reason="state machine", actor=OPERATOR)
        except (AliasNotSet, ModelNotFound):
            assert current is None, "a set alias could not be rolled back"
            return
        except InvalidRequest:
            assert current is not None and not earlier, "a rollback with an earlier version was refused"
            return
        assert current is not None and earlier
        # The newest earlier version the alias pointed at, before the current one.
        expected = next(v for v in reversed(self.pointed[(model, alias)]) if v < current[0])
        assert change.version == expected < current[0]
        self._moved(model, alias, expected, current[1])

    @rule(now=st.integers(0, 3))
    def restart(self, now: int) -> None:
        """The registry process restarts (one draw in four, so that histories grow between restarts)."""
        if now:
            return
        self.engine.dispose()
        self._open()

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def aliases_point_where_they_should(self) -> None:
        for model in self.versions:
            for alias in ("champion", "canary", "shadow"):
                expected = self.aliases.get((model, alias))
                try:
                    state = self.service.get_alias(model, alias)
                except AliasNotSet:
                    assert expected is None, f"{model}/{alias} lost its version {expected}"
                    continue
                assert expected is not None, f"{model}/{alias} points at {state.version}, expected nothing"
                assert (state.version, state.weight) == expected
                if alias == "canary":
                    assert state.weight is not None and 0 < state.weight <= 1
                else:
                    assert state.weight is None

    @invariant()
    def artifacts_match_their_recorded_sha256(self) -> None:
        for model, shas in self.versions.items():
            listed = self.service.list_versions(model)
            assert [v.version for v in listed] == list(range(1, len(shas) + 1))
            for version, sha in enumerate(shas, start=1):
                recorded, stream = self.service.open_artifact(model, version)
                with stream:
                    assert hashlib.sha256(stream.read()).hexdigest() == recorded.sha256 == sha
        staged = self.dir / "artifacts" / "tmp"
        assert not staged.exists() or not any(staged.iterdir()), f"staged files left: {list(staged.iterdir())}"

    @invariant()
    def one_outbox_event_per_change(self) -> None:
        assert len(self.service.store.pending_messages(100_000)) == self.events


RegistryMachine.TestCase.settings = settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                                             database=None, derandomize=True,
                                             suppress_health_check=[HealthCheck.too_slow])
test_registry_state_machine = RegistryMachine.TestCase
