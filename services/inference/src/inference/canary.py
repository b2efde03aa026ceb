"""Automatic canary analysis: evidence per route, a pure decision function, and the loop that acts.

Each replica keeps, per model, a window of what its champion and canary did (requests, errors,
latencies, online accuracy from joined labels) and how far canary answers were from the
champion's on the same inputs (the background comparison in :mod:`inference.shadow`). Every
``canary_interval_s`` :func:`decide` turns the window into hold, step (the next weight of
``canary_steps``), promote (after the last step) or rollback. Changes compare-and-set on the
rollout's revision, so two replicas analysing at once cannot both step; every decision other
than "not enough requests yet" is published as a ``CanaryDecidedV1`` with its evidence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import numpy as np
from redis.exceptions import RedisError
from schemas.envelope import Envelope
from schemas.inference import CanaryDecidedV1, RouteEvidence
from schemas.ingest import LabelEventV1

from inference import metrics
from inference.aliases import AliasMove, AliasTarget, AliasWriter, LocalAliases, target_of
from inference.errors import InferenceError, RolloutConflict
from inference.rollout import RolloutState
from inference.routing import ModelRoute

log = logging.getLogger(__name__)

Action = Literal["hold", "step", "promote", "rollback"]


@dataclass(frozen=True, slots=True)
class Policy:
    """Thresholds of the analysis (see the ``canary_*`` settings)."""

    steps: tuple[float, ...] = (0.05, 0.25, 0.5, 1.0)
    min_requests: int = 200
    min_requests_rollback: int = 20
    max_error_rate_increase: float = 0.02
    max_p99_ratio: float = 1.5
    p99_slack_ms: float = 5.0
    max_divergence: float = 0.1
    min_compared: int = 20
    max_accuracy_drop: float = 0.02
    min_labelled: int = 50


@dataclass(frozen=True, slots=True)
class Window:
    """What one route did since the last decision."""

    version: int
    requests: int = 0
    errors: int = 0
    p99_ms: float | None = None
    labelled: int = 0
    correct: int = 0

    @property
    def error_rate(self) -> float:
        """Errors per request (0 without requests)."""
        return self.errors / self.requests if self.requests else 0.0

    @property
    def accuracy(self) -> float | None:
        """Correct predictions per labelled one, once any label arrived."""
        return self.correct / self.labelled if self.labelled else None

    def evidence(self) -> RouteEvidence:
        """The window as event evidence."""
        return RouteEvidence(version=self.version, requests=self.requests, errors=self.errors,
                             error_rate=self.error_rate, p99_latency_ms=self.p99_ms, labelled=self.labelled,
                             accuracy=self.accuracy)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decision: what to do, the weight afterwards, and why."""

    action: Action
    weight_after: float
    reasons: tuple[str, ...]
    waiting: bool = False
    """True when the only reason to hold is too little traffic (not published)."""


def decide(policy: Policy, *, weight: float, champion: Window, canary: Window, divergence: float | None,
           compared: int, failing: str | None = None) -> Verdict:
    """Hold, step, promote or roll back a canary at ``weight`` on the evidence of one window.

    Bad evidence rolls back as soon as there is a little of it (``min_requests_rollback``
    canary requests for errors, ``min_compared`` comparisons for divergence), and at once when
    the gateway marked the canary ``failing`` (its calls failed in a row; see
    :mod:`inference.readiness`); moving forward needs ``min_requests`` canary requests with
    nothing wrong.

    >>> p = Policy(min_requests=100, min_requests_rollback=20)
    >>> ok = Window(1, requests=900, errors=0, p99_ms=4.0)
    >>> decide(p, weight=0.05, champion=ok, canary=Window(2, requests=100, p99_ms=4.5), divergence=0.0,
    ...        compared=100).action
    'step'
    >>> decide(p, weight=0.05, champion=ok, canary=Window(2, requests=20, errors=5), divergence=None,
    ...        compared=0).action
    'rollback'
    >>> decide(p, weight=1.0, champion=ok, canary=Window(2, requests=100, p99_ms=4.0), divergence=None,
    ...        compared=0).action
    'promote'
    >>> decide(p, weight=0.25, champion=ok, canary=Window(2, requests=5, errors=5), divergence=None,
    ...        compared=0, failing="5 calls in a row failed").reasons
    ('the gateway stopped routing to the canary: 5 calls in a row failed',)
    """
    problems: list[str] = []
    if failing is not None:
        problems.append(f"the gateway stopped routing to the canary: {failing}")
    if (canary.requests >= policy.min_requests_rollback
            and canary.error_rate > champion.error_rate + policy.max_error_rate_increase):
        problems.append(f"canary error rate {canary.error_rate:.2%} exceeds the champion's "
                        f"{champion.error_rate:.2%} by more than {policy.max_error_rate_increase:.2%}")
    if (canary.requests >= policy.min_requests and canary.p99_ms is not None and champion.p99_ms is not None
            and canary.p99_ms > max(champion.p99_ms * policy.max_p99_ratio, champion.p99_ms + policy.p99_slack_ms)):
        problems.append(f"canary p99 {canary.p99_ms:.1f} ms exceeds {policy.max_p99_ratio}x the champion's "
                        f"{champion.p99_ms:.1f} ms")
    if divergence is not None and compared >= policy.min_compared and divergence > policy.max_divergence:
        problems.append(f"canary outputs differ from the champion's by {divergence:.4f} on average over {compared} "
                        f"requests (limit {policy.max_divergence})")
    if (canary.accuracy is not None and champion.accuracy is not None and canary.labelled >= policy.min_labelled
            and champion.labelled >= policy.min_labelled
            and canary.accuracy < champion.accuracy - policy.max_accuracy_drop):
        problems.append(f"canary online accuracy {canary.accuracy:.2%} is below the champion's "
                        f"{champion.accuracy:.2%} by more than {policy.max_accuracy_drop:.2%}")
    if problems:
        return Verdict("rollback", 0.0, tuple(problems))
    if canary.requests < policy.min_requests:
        return Verdict("hold", weight, (f"{canary.requests} of {policy.min_requests} canary requests so far",),
                       waiting=True)
    healthy = f"healthy over {canary.requests} canary requests (errors {canary.error_rate:.2%}, " \
              f"divergence {'n/a' if divergence is None else f'{divergence:.4f}'})"
    higher = [s for s in policy.steps if s > weight + 1e-9]
    if not higher:
        return Verdict("promote", 0.0, (healthy, "last step reached: the canary becomes the champion"))
    return Verdict("step", higher[0], (healthy,))


@dataclass
class _RouteStats:
    requests: int = 0
    errors: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=20_000))
    labelled: int = 0
    correct: int = 0


class CanaryStats:
    """Per-replica windows of each model's routes, reset after each decision that acts."""

    def __init__(self) -> None:
        self._routes: dict[tuple[str, int], _RouteStats] = {}
        self._divergence: dict[tuple[str, int], list[float]] = {}

    def record(self, model: str, version: int, *, latency_ms: float, ok: bool) -> None:
        """One request answered (or failed in the backend) by ``version``."""
        stats = self._routes.setdefault((model, version), _RouteStats())
        stats.requests += 1
        if ok:
            stats.latencies.append(latency_ms)
        else:
            stats.errors += 1

    def record_label(self, model: str, version: int, *, correct: bool) -> None:
        """A label arrived for a prediction of ``version``."""
        stats = self._routes.setdefault((model, version), _RouteStats())
        stats.labelled += 1
        stats.correct += int(correct)

    def record_divergence(self, model: str, canary_version: int, value: float) -> None:
        """The canary's answer differed from the champion's by ``value`` on one request."""
        self._divergence.setdefault((model, canary_version), []).append(value)

    def window(self, model: str, version: int) -> Window:
        """What ``version`` did since the last reset."""
        s = self._routes.get((model, version), _RouteStats())
        p99 = float(np.percentile(np.fromiter(s.latencies, float), 99)) if s.latencies else None
        return Window(version, s.requests, s.errors, p99, s.labelled, s.correct)

    def divergence(self, model: str, canary_version: int) -> tuple[float | None, int]:
        """Mean divergence of the canary and the number of comparisons."""
        values = self._divergence.get((model, canary_version), [])
        return (float(np.mean(values)) if values else None), len(values)

    def reset(self, model: str) -> None:
        """Start a new window for every route of ``model``."""
        for key in [k for k in self._routes if k[0] == model]:
            del self._routes[key]
        for key in [k for k in self._divergence if k[0] == model]:
            del self._divergence[key]


def is_correct(prediction: float | int | str | None, label: bool | int | float | str) -> bool:
    """Whether a prediction matches a label: scores in [0, 1] against 0/1 labels at 0.5, else equality.

    >>> is_correct(0.8, 1), is_correct(0.2, True), is_correct("a", "a"), is_correct(2, 3)
    (True, False, True, False)
    """
    if isinstance(label, bool):
        label = int(label)
    if isinstance(prediction, float) and label in (0, 1) and 0 <= prediction <= 1:
        return int(prediction >= 0.5) == label
    return prediction == label


class LabelJoin:
    """Remembers recent predictions by entity so a label arriving later can be scored."""

    def __init__(self, stats: CanaryStats, capacity: int) -> None:
        self._stats = stats
        self._capacity = capacity
        self._recent: OrderedDict[str, tuple[str, int, float | int | str | None]] = OrderedDict()

    def remember(self, entity: str, model: str, version: int, prediction: float | int | str | None) -> None:
        """The latest prediction for ``entity``."""
        self._recent[entity] = (model, version, prediction)
        self._recent.move_to_end(entity)
        if len(self._recent) > self._capacity:
            self._recent.popitem(last=False)

    async def on_labels(self, envelopes: list[Envelope[LabelEventV1]]) -> None:
        """Score the remembered prediction of each labelled entity (each prediction at most once)."""
        for env in envelopes:
            found = self._recent.pop(env.payload.entity_id, None)
            if found is None:
                metrics.LABELS_JOINED.labels("unmatched").inc()
                continue
            model, version, prediction = found
            self._stats.record_label(model, version, correct=is_correct(prediction, env.payload.label))
            metrics.LABELS_JOINED.labels("joined").inc()


PublishDecision = Callable[[CanaryDecidedV1], Awaitable[None]]

_State = tuple[int | None, int | None, float]


@dataclass
class _Pending:
    """A decision's alias moves, kept until the rollout shows them (retried while the writer fails)."""

    decided_on: _State
    moves: list[AliasMove]
    reason: str
    revision: int
    applied: bool = False
    attempts: int = 0
    since: float = field(default_factory=time.monotonic)


def moves_for(verdict: Verdict, route: ModelRoute) -> list[AliasMove]:
    """The alias moves that carry out ``verdict`` on ``route`` (each with the state it was decided on).

    Promotion points the champion at the canary first and removes the canary after, so every
    request is served by a healthy version in between.

    >>> r = ModelRoute("m", champion=1, canary=2, canary_weight=1.0)
    >>> [(m.alias, m.target.version) for m in moves_for(Verdict("promote", 0.0, ()), r)]
    [('champion', 2), ('canary', None)]
    """
    canary = target_of(route, "canary")
    if verdict.action == "step":
        return [AliasMove("canary", AliasTarget(route.canary, verdict.weight_after), canary)]
    if verdict.action == "promote":
        return [AliasMove("champion", AliasTarget(route.canary), target_of(route, "champion")),
                AliasMove("canary", AliasTarget(None), canary)]
    if verdict.action == "rollback":
        return [AliasMove("canary", AliasTarget(None), canary)]
    return []


class CanaryAnalyzer:
    """The loop: analyse every model with a canary, publish each decision, have the alias writer carry it out.

    With a registry the writer is the registry's API: the decision's changes reach the routing
    table only as the registry's rollout events. A change the writer could not make (registry
    unreachable) is kept and retried every round until it is made, or dropped when the rollout
    moved elsewhere meanwhile (an operator or another replica decided first); no new decision is
    made for that model until then.
    """

    def __init__(self, rollout: RolloutState, stats: CanaryStats, policy: Policy, *, publish: PublishDecision,
                 interval_s: float, writer: AliasWriter | None = None, settle_s: float = 60.0,
                 failing: Callable[[str, int], str | None] | None = None) -> None:
        self.rollout = rollout
        self.stats = stats
        self.policy = policy
        self._publish = publish
        self.interval_s = interval_s
        self.writer: AliasWriter = writer if writer is not None else LocalAliases(rollout, origin="analysis")
        self.settle_s = settle_s
        """How long an applied change may take to show in the rollout before the analysis resumes anyway."""
        self._seen: dict[str, _State] = {}
        self.pending: dict[str, _Pending] = {}
        """Decisions whose changes are not yet in the rollout, by model."""
        self.decisions: list[CanaryDecidedV1] = []
        """Every decision this replica made (most recent last; bounded)."""
        self._failing = failing
        """Why the gateway marked a canary version failing, or None (``VersionGate.failing``)."""
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Analyse now rather than at the end of the interval (a canary was marked failing)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Analyse every ``interval_s`` until ``stop``."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken_or(stop), self.interval_s)
            self._wake.clear()
            if stop.is_set():
                return
            try:
                await self.analyse_all()
            except (RedisError, OSError, InferenceError) as exc:
                log.warning("canary analysis skipped", extra={"error": str(exc)})

    async def _woken_or(self, stop: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def analyse_all(self) -> list[CanaryDecidedV1]:
        """One round over every model; the decisions published."""
        out = []
        for route in list(self.rollout.table.values()):
            decision = await self.analyse(route)
            if decision is not None:
                out.append(decision)
        return out

    async def analyse(self, route: ModelRoute) -> CanaryDecidedV1 | None:
        """Decide for one model; None when there is nothing to decide or to publish."""
        model = route.model
        state: _State = (route.champion, route.canary, route.canary_weight)
        if model in self.pending and await self._carry_on(model, state):
            return None
        if self._seen.get(model) != state:
            # The rollout moved (an operator, another replica, a decision): evidence starts again.
            self._seen[model] = state
            self.stats.reset(model)
            return None
        if route.canary is None or route.canary_weight <= 0 or route.champion is None:
            return None
        champion = self.stats.window(model, route.champion)
        canary = self.stats.window(model, route.canary)
        divergence, compared = self.stats.divergence(model, route.canary)
        failing = self._failing(model, route.canary) if self._failing is not None else None
        verdict = decide(self.policy, weight=route.canary_weight, champion=champion, canary=canary,
                         divergence=divergence, compared=compared, failing=failing)
        if verdict.waiting:
            return None
        by = "inference/canary-analysis"
        decision = CanaryDecidedV1(model_name=model, champion=champion.evidence(), canary=canary.evidence(),
                                   action=verdict.action, weight_before=route.canary_weight,
                                   weight_after=verdict.weight_after, divergence=divergence, compared=compared,
                                   reasons=list(verdict.reasons), decided_by=by, decided_at=datetime.now(UTC))
        metrics.CANARY_DECISIONS.labels(model, verdict.action).inc()
        log.info("canary decision", extra={"model": model, "action": verdict.action,
                                           "weight": verdict.weight_after, "reasons": list(verdict.reasons)})
        self.decisions = [*self.decisions[-99:], decision]
        try:
            await self._publish(decision)
        except Exception:
            log.exception("canary decision not published", extra={"model": model})
        moves = moves_for(verdict, route)
        if moves:
            self.pending[model] = _Pending(state, moves, f"canary analysis: {'; '.join(verdict.reasons)}",
                                           route.revision)
            await self._carry_on(model, state)
        return decision

    async def _carry_on(self, model: str, state: _State) -> bool:
        """Advance the pending change of ``model``; True while it blocks new decisions."""
        p = self.pending[model]
        if state != p.decided_on:
            # The rollout shows the change (or someone else's): the decision is done.
            del self.pending[model]
            return False
        if p.applied:
            if time.monotonic() - p.since < self.settle_s:
                return True
            log.warning("the canary decision's change was made but never reached the rollout; analysing again",
                        extra={"model": model, "owner": self.writer.owner})
            del self.pending[model]
            return False
        p.attempts += 1
        try:
            await self.writer.move(model, p.moves, reason=p.reason, changed_by="inference/canary-analysis",
                                   expected_revision=p.revision)
        except RolloutConflict as exc:
            log.warning("canary decision superseded; dropped", extra={"model": model, "reason": str(exc)})
            metrics.CANARY_CHANGES.labels(model, "superseded").inc()
            del self.pending[model]
            return False
        except InferenceError as exc:
            metrics.CANARY_CHANGES.labels(model, "failed").inc()
            log.error("canary decision not yet applied; retrying next round",
                      extra={"model": model, "owner": self.writer.owner, "attempts": p.attempts, "error": str(exc)})
            return True
        metrics.CANARY_CHANGES.labels(model, "applied").inc()
        p.applied = True
        p.since = time.monotonic()
        return True
