"""A canary Triton reports ready but whose calls fail (plan G7): callers get the champion's answer,
the canary is marked failing after a few failures in a row, the analysis rolls it back at once,
and a synthetic request it answers clears the mark."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from inference import metrics, readiness
from inference.canary import CanaryAnalyzer, CanaryStats, Policy
from inference.errors import BackendFailed, BackendUnavailable
from inference.readiness import VersionGate
from inference.routing import ModelRoute, bucket
from inference.service import InferRequest
from inference.tensors import Tensor

from services.inference.tests.unit.fakes import FixedRollout
from services.inference.tests.unit.test_inference_version_gate import X, _service, _Triton


class _BrokenTriton(_Triton):
    """Triton reporting every version ready, whose calls to the versions in ``broken`` raise ``error``: by
    default a failure Triton answers (plan G7); :class:`BackendUnavailable` is no answer at all (plan G1,
    their server killed)."""

    def __init__(self, ready_versions: set[int], broken: set[int], *,
                 error: type[Exception] = BackendFailed) -> None:
        super().__init__(ready_versions)
        self.broken = broken
        self.error = error
        self.calls: list[int] = []
        self.synthetic_inputs: list[list[Tensor]] = []

    async def infer(self, model: str, version: int, inputs: list[Tensor], outputs: list[str] | None, *,
                    timeout_s: float, request_id: str = "") -> list[Tensor]:
        self.calls.append(version)
        if version in self.broken:
            raise self.error(f"Triton on {model} v{version}: injected {self.error.__name__}")
        return await super().infer(model, version, inputs, outputs, timeout_s=timeout_s, request_id=request_id)


def _count(metric: object, *labels: str) -> float:
    return metric.labels(*labels)._value.get()  # type: ignore[attr-defined]


async def test_a_failing_canary_costs_callers_nothing_and_is_skipped_after_five_failures_in_a_row() -> None:
    model = "g7a"
    route = ModelRoute(model, champion=1, canary=2, canary_weight=0.5)
    triton = _BrokenTriton({1, 2}, broken={2})
    gate = VersionGate(triton, failures_to_trip=5)
    woken: list[tuple[str, int, str]] = []
    gate.on_failing = lambda m, v, why: woken.append((m, v, why))
    await gate.on_table({model: route})
    service, _ = _service(triton, route, gate)
    gate.synthetic = service.probe_version
    canary_keys = [k for k in (f"c-{i}" for i in range(400)) if bucket(model, k) < 0.5][:40]
    retried_before = _count(metrics.CANARY_RETRIED, model)

    results = [await service.infer(InferRequest(model=model, inputs=X, entity=k)) for k in canary_keys]

    # Every caller got the champion's answer; the canary was asked exactly five times, then skipped.
    assert {(r.version, r.route) for r in results} == {(1, "champion")}
    assert [float(r.outputs[0].array[0, 0]) for r in results] == [1.0] * len(results)
    assert triton.calls.count(2) == 5
    assert _count(metrics.CANARY_RETRIED, model) - retried_before == 5
    assert gate.failing(model, 2) is not None and "injected" in gate.failing(model, 2)  # type: ignore[operator]
    assert not gate.ready(model, 2)
    assert len(woken) == 1 and woken[0] == (model, 2, gate.failing(model, 2))
    assert "5 calls in a row failed" in woken[0][2]
    assert _count(metrics.VERSION_MARKED_FAILING, model) == 1
    assert _count(metrics.CANARY_SKIPPED, model, "canary", "failing") == len(canary_keys) - 5
    assert service.stats.window(model, 2).errors == 5  # the canary's evidence keeps its failures
    ok, reason = await service.ready()
    assert ok and "failing although ready" in reason and f"{model} v2 (canary" in reason, reason

    # While it fails, the background round's synthetic request keeps the mark; once it answers, it clears.
    await gate.check(readiness.gated_versions({model: route}))
    await gate._retry_failing()
    assert gate.failing(model, 2) is not None and triton.calls[-1] == 2
    triton.broken = set()
    await gate._retry_failing()
    assert gate.failing(model, 2) is None and gate.ready(model, 2)
    again = await service.infer(InferRequest(model=model, inputs=X, entity=canary_keys[0]))
    assert (again.version, again.route) == (2, "canary")


async def test_an_answer_between_failures_starts_the_count_again() -> None:
    gate = VersionGate(_Triton({2}), failures_to_trip=3)
    await gate.on_table({"g7b": ModelRoute("g7b", champion=1, canary=2, canary_weight=0.1)})
    for _ in range(4):
        assert not gate.failed("g7b", 2, "boom")
        assert not gate.failed("g7b", 2, "boom")
        gate.answered("g7b", 2)
    assert gate.ready("g7b", 2) and gate.failing("g7b", 2) is None
    assert not gate.failed("g7b", 2, "a") and not gate.failed("g7b", 2, "b") and gate.failed("g7b", 2, "c")
    assert gate.failing("g7b", 2) == "3 calls in a row failed (last: c)" and not gate.failed("g7b", 2, "d")
    await gate.on_table({"g7b": ModelRoute("g7b", champion=2)})  # promoted or rolled back: forgotten
    assert gate.failing("g7b", 2) is None


async def test_without_the_retry_the_caller_gets_the_canarys_502_and_the_canary_is_still_skipped() -> None:
    model = "g7c"
    route = ModelRoute(model, champion=1, canary=2, canary_weight=1.0)
    triton = _BrokenTriton({1, 2}, broken={2})
    gate = VersionGate(triton, failures_to_trip=2)
    await gate.on_table({model: route})
    service, _ = _service(triton, route, gate)
    service.retry_canary_on_champion = False
    for _ in range(2):
        with pytest.raises(BackendFailed):
            await service.infer(InferRequest(model=model, inputs=X, entity="e"))
    assert service.stats.window(model, 2).errors == 2  # counted once each
    result = await service.infer(InferRequest(model=model, inputs=X, entity="e"))
    assert (result.version, result.route) == (1, "champion")


async def test_the_analysis_rolls_a_failing_canary_back_at_once_with_that_evidence() -> None:
    model = "g7d"
    route = ModelRoute(model, champion=1, canary=2, canary_weight=0.25, revision=3)
    rollout = FixedRollout(route)
    failing: dict[tuple[str, int], str] = {}
    published = []

    async def publish(decision: object) -> None:
        published.append(decision)

    class _Writer:
        moves: list[object] = []

        async def move(self, model: str, moves: list[object], *, reason: str, changed_by: str,
                       expected_revision: int | None = None) -> None:
            self.moves.append((model, moves, reason))

    analyzer = CanaryAnalyzer(rollout, CanaryStats(), Policy(), publish=publish,  # type: ignore[arg-type]
                              interval_s=3600, writer=_Writer(),  # type: ignore[arg-type]
                              failing=lambda m, v: failing.get((m, v)))
    assert await analyzer.analyse(route) is None  # the first round only notes the rollout
    assert await analyzer.analyse(route) is None  # no traffic, nothing failing: waiting
    failing[(model, 2)] = "5 calls in a row failed (last: injected)"
    decision = await analyzer.analyse(route)
    assert decision is not None and decision.action == "rollback" and decision.weight_after == 0
    assert decision.reasons == ["the gateway stopped routing to the canary: 5 calls in a row failed (last: injected)"]
    assert published == [decision]

    # wake() makes the loop analyse now instead of after its interval.
    stop = asyncio.Event()
    rounds: list[int] = []

    async def counted() -> list[object]:
        rounds.append(1)
        return []

    analyzer.analyse_all = counted  # type: ignore[method-assign, assignment]
    task = asyncio.create_task(analyzer.run(stop))
    await asyncio.sleep(0.05)
    assert rounds == []
    analyzer.wake()
    for _ in range(50):
        if rounds:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert rounds == [1]


def test_the_synthetic_request_is_zeros_of_the_signature_one_row() -> None:
    triton = _BrokenTriton({1}, broken=set())
    route = ModelRoute("g7e", champion=1)
    service, _ = _service(triton, route, VersionGate(triton))
    sent: list[list[Tensor]] = []

    async def infer(model: str, version: int, inputs: list[Tensor], outputs: list[str] | None, *,
                    timeout_s: float, request_id: str = "") -> list[Tensor]:
        sent.append(inputs)
        return []

    triton.infer = infer  # type: ignore[method-assign]
    asyncio.run(service.probe_version("g7e", 1))
    assert len(sent) == 1 and [(t.name, t.datatype, t.array.shape) for t in sent[0]] == [("x", "FP32", (1, 4))]
    assert not np.any(sent[0][0].array)


async def test_a_canary_whose_calls_get_no_answer_is_answered_by_the_champion_and_marked_failing() -> None:
    model = "g1a"
    route = ModelRoute(model, champion=1, canary=2, canary_weight=1.0)
    triton = _BrokenTriton({1, 2}, broken={2}, error=BackendUnavailable)
    gate = VersionGate(triton, failures_to_trip=5)
    await gate.on_table({model: route})
    service, _ = _service(triton, route, gate)
    results = [await service.infer(InferRequest(model=model, inputs=X, entity=f"e-{i}")) for i in range(8)]
    assert {(r.version, r.route) for r in results} == {(1, "champion")}
    assert triton.calls.count(2) == 5 and gate.failing(model, 2) is not None
    assert service.breaker.closed  # the champion's answers kept Triton's breaker closed


async def test_when_triton_answers_nobody_the_canary_is_not_blamed() -> None:
    model = "g1b"
    route = ModelRoute(model, champion=1, canary=2, canary_weight=1.0)
    triton = _BrokenTriton({1, 2}, broken={1, 2}, error=BackendUnavailable)
    gate = VersionGate(triton, failures_to_trip=2)
    await gate.on_table({model: route})
    service, _ = _service(triton, route, gate)
    for i in range(4):
        with pytest.raises(BackendUnavailable):
            await service.infer(InferRequest(model=model, inputs=X, entity=f"e-{i}"))
    assert gate.failing(model, 2) is None and gate.ready(model, 2)
