"""The version gate: a canary or shadow version Triton does not report ready gets no traffic."""

from __future__ import annotations

import asyncio
import doctest

import numpy as np
from inference import metrics, readiness
from inference.canary import CanaryStats, LabelJoin
from inference.readiness import VersionGate
from inference.routing import ModelRoute, bucket
from inference.service import InferenceService, InferRequest
from inference.shadow import MirrorJob, ShadowMirror
from inference.tensors import Signature, Spec, Tensor

from services.inference.tests.unit.fakes import FixedRollout, NullSink

X = [Tensor("x", "FP32", np.zeros((1, 4), np.float32))]


class _Triton:
    """Triton's health and infer APIs with switchable answers."""

    name = "triton"

    def __init__(self, ready_versions: set[int], *, server_up: bool = True, delay: float = 0.0) -> None:
        self.ready_versions = ready_versions
        self.server_up = server_up
        self.delay = delay
        self.asked: list[tuple[str, int]] = []
        self.served: list[int] = []

    async def ready(self) -> bool:
        return self.server_up

    async def model_ready(self, model: str, version: int) -> bool:
        self.asked.append((model, version))
        await asyncio.sleep(self.delay)
        return self.server_up and version in self.ready_versions

    async def infer(self, model: str, version: int, inputs: list[Tensor], outputs: list[str] | None, *,
                    timeout_s: float, request_id: str = "") -> list[Tensor]:
        self.served.append(version)
        return [Tensor("y", "FP32", np.full((1, 1), float(version), np.float32))]

    async def signature(self, model: str, version: int) -> Signature:
        return Signature([Spec("x", "FP32", (-1, 4))], [Spec("y", "FP32", (-1, 1))], 8)

    async def close(self) -> None:
        pass


def _service(triton: _Triton, route: ModelRoute, gate: VersionGate) -> tuple[InferenceService, list[MirrorJob]]:
    mirrored: list[MirrorJob] = []
    stats = CanaryStats()
    mirror = ShadowMirror(lambda *a: asyncio.sleep(0, []), lambda *a: None, queue_size=10, workers=1)
    mirror.offer = lambda job: mirrored.append(job) or True  # type: ignore[method-assign, func-returns-value]
    service = InferenceService(rollout=FixedRollout(route), backend=triton, fallback=None,  # type: ignore[arg-type]
                               mirror=mirror, predictions=NullSink(), stats=stats,  # type: ignore[arg-type]
                               labels=LabelJoin(stats, 10), store=None,  # type: ignore[arg-type]
                               timeout_s=1.0, max_inflight=10, compare_canary=False, gate=gate)
    return service, mirrored


def _skipped(model: str, alias: str) -> float:
    return metrics.CANARY_SKIPPED.labels(model, alias, "not_ready")._value.get()


def test_doctests() -> None:
    result = doctest.testmod(readiness)
    assert result.attempted > 0 and result.failed == 0


async def test_a_version_is_ready_only_once_triton_says_so_and_a_silent_triton_changes_nothing() -> None:
    triton = _Triton({1})
    gate = VersionGate(triton, timeout_s=0.5)
    table = {"m": ModelRoute("m", champion=1, canary=2, canary_weight=0.5, shadow=3)}
    assert not gate.ready("m", 2)  # never checked: not ready
    await gate.on_table(table)
    assert sorted(triton.asked) == [("m", 2), ("m", 3)]  # canary and shadow; the champion is never gated
    assert (gate.ready("m", 2), gate.ready("m", 3)) == (False, False)
    assert gate.not_ready(table) == [("m", 2, "canary"), ("m", 3, "shadow")]

    triton.ready_versions = {1, 2, 3}
    await gate.on_table(table)  # already known: a changed table checks only new versions
    assert not gate.ready("m", 2)
    await gate.check(readiness.gated_versions(table))  # the background round
    assert gate.ready("m", 2) and gate.ready("m", 3) and gate.not_ready(table) == []

    triton.server_up = False  # Triton gives no verdict: the last states stay
    await gate.check(readiness.gated_versions(table))
    assert gate.ready("m", 2)
    triton.server_up, triton.delay = True, 5.0  # a frozen Triton: the round is cut off, states stay
    triton.ready_versions = set()
    await gate.check(readiness.gated_versions(table))
    assert gate.ready("m", 2)
    triton.delay = 0.0
    await gate.check(readiness.gated_versions(table))
    assert not gate.ready("m", 2)  # Triton answers, and says not ready (a refused load, an unload)

    await gate.on_table({"m": ModelRoute("m", champion=1)})  # versions that left the table are forgotten
    assert gate.not_ready(table) == [("m", 2, "canary"), ("m", 3, "shadow")]
    triton.asked.clear()
    await gate.on_table(table)
    assert sorted(triton.asked) == [("m", 2), ("m", 3)]


async def test_a_canary_triton_does_not_report_ready_gives_its_share_to_the_champion() -> None:
    route = ModelRoute("g2m", champion=1, canary=2, canary_weight=0.5, shadow=3)
    triton = _Triton({1})
    gate = VersionGate(triton)
    await gate.on_table({"g2m": route})
    service, mirrored = _service(triton, route, gate)
    canary_keys = [k for k in (f"c-{i}" for i in range(200)) if bucket("g2m", k) < 0.5]
    before = (_skipped("g2m", "canary"), _skipped("g2m", "shadow"))
    results = [await service.infer(InferRequest(model="g2m", inputs=X, entity=k)) for k in canary_keys]
    await asyncio.sleep(0)  # the mirrors are decided in the loop turn after each answer
    assert {(r.version, r.route) for r in results} == {(1, "champion")}
    assert set(triton.served) == {1}
    assert _skipped("g2m", "canary") - before[0] == len(canary_keys)
    assert mirrored == [] and _skipped("g2m", "shadow") - before[1] == len(canary_keys)
    ok, reason = await service.ready()
    assert ok and "g2m v2 (canary)" in reason and "g2m v3 (shadow)" in reason, reason

    # A caller naming the version keeps today's behaviour: it is asked of Triton as named.
    pinned = await service.infer(InferRequest(model="g2m", inputs=X, entity="c-1", version=2))
    assert (pinned.version, pinned.route) == (2, "pinned")

    # Once Triton reports the canary (and shadow) ready, the canary's share is its own again.
    triton.ready_versions = {1, 2, 3}
    await gate.check(readiness.gated_versions({"g2m": route}))
    results = [await service.infer(InferRequest(model="g2m", inputs=X, entity=k)) for k in canary_keys]
    await asyncio.sleep(0)
    assert {(r.version, r.route) for r in results} == {(2, "canary")}
    assert [j.version for j in mirrored] == [3] * len(canary_keys)
    assert (await service.ready()) == (True, "ready")


async def test_without_a_champion_a_canary_that_is_not_ready_is_still_asked() -> None:
    route = ModelRoute("g2n", canary=2, canary_weight=0.1)
    triton = _Triton({2})
    gate = VersionGate(triton)  # never checked: not ready, but there is nothing else to serve
    service, _ = _service(triton, route, gate)
    result = await service.infer(InferRequest(model="g2n", inputs=X, entity="c-1"))
    assert (result.version, result.route) == (2, "canary")
