"""The circuit breaker in front of Triton: its state machine (a fake clock, no sleeps) and the core behind it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
import pytest
from inference.breaker import CircuitBreaker
from inference.canary import CanaryStats, LabelJoin
from inference.errors import (
    BackendTimeout,
    BackendUnavailable,
    BreakerOpen,
    InvalidInput,
    ModelNotFound,
    VersionUnavailable,
    http_status,
)
from inference.routing import ModelRoute
from inference.service import InferenceService, InferRequest
from inference.shadow import ShadowMirror
from inference.tensors import Signature, Spec, Tensor
from prometheus_client import REGISTRY

from services.inference.tests.unit.fakes import FixedRollout, NullSink

X = [Tensor("x", "FP32", np.zeros((1, 4), np.float32))]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _breaker(clock: Clock, name: str, failures: int = 3, cooldown_s: float = 2.0) -> CircuitBreaker:
    return CircuitBreaker(name, failures=failures, cooldown_s=cooldown_s, probe_timeout_s=5.0, clock=clock)


# -- the state machine ---------------------------------------------------------------------------------


def test_consecutive_failures_open_it_and_an_answer_in_between_starts_the_count_again() -> None:
    clock = Clock()
    b = _breaker(clock, "sm-count")
    b.failed("no answer")
    b.failed("no answer")
    b.succeeded()
    b.failed("no answer")
    b.failed("no answer")
    assert b.closed and b.state == "closed" and b.failures == 2
    b.failed("Triton did not answer in time")
    assert (b.closed, b.state, b.last_error) == (False, "open", "Triton did not answer in time")
    assert _sample("inference_breaker_state", backend="sm-count") == 1
    assert _sample("inference_breaker_transitions_total", backend="sm-count", from_state="closed",
                   to_state="open") == 1
    b.failed("late")           # calls that were already out when it opened are not counted again
    b.succeeded()
    assert b.state == "open" and b.last_error == "Triton did not answer in time"
    assert "circuit breaker open" in b.describe() and "next probe in 2.0s" in b.describe()


def test_after_the_cooldown_exactly_one_probe_goes_and_its_outcome_decides(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    b = _breaker(clock, "sm-probe")
    with caplog.at_level(logging.INFO, logger="inference.breaker"):
        for _ in range(3):
            b.failed("no answer")
        clock.now += 1.99
        assert not b.admit_probe()
        clock.now += 0.01
        assert b.admit_probe() and b.state == "half_open"
        assert [b.admit_probe() for _ in range(5)] == [False] * 5    # one probe at a time
        assert _sample("inference_breaker_state", backend="sm-probe") == 2
        b.probe_failed("request", "still frozen")
        assert b.state == "open" and b.last_error == "still frozen"
        assert not b.admit_probe()                                   # a whole new cooldown
        clock.now += 2.0
        assert b.admit_probe()
        b.probe_succeeded("health")
        assert b.closed and b.failures == 0
        assert _sample("inference_breaker_state", backend="sm-probe") == 0
    assert _sample("inference_breaker_probes_total", backend="sm-probe", kind="request", outcome="failed") == 1
    assert _sample("inference_breaker_probes_total", backend="sm-probe", kind="health", outcome="ok") == 1
    moves = [(r.breaker_from, r.breaker_to) for r in caplog.records if hasattr(r, "breaker_to")]  # type: ignore[attr-defined]
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "open"), ("open", "half_open"),
                     ("half_open", "closed")]
    assert "sm-probe circuit breaker closed -> open" in caplog.records[0].getMessage()
    assert "still frozen" in caplog.records[2].getMessage()


def test_a_cancelled_probe_lets_the_next_caller_probe_and_a_lost_one_is_given_up() -> None:
    clock = Clock()
    b = _breaker(clock, "sm-lost")
    for _ in range(3):
        b.failed("no answer")
    clock.now += 2
    assert b.admit_probe()
    b.probe_abandoned()
    assert b.state == "open" and b.admit_probe()     # at once: no verdict, no new cooldown
    assert not b.admit_probe()
    clock.now += 5.0                                 # the probe never reported
    assert b.admit_probe() and b.state == "half_open"
    b.probe_succeeded("request")
    assert b.closed
    b.probe_failed("request", "late")                # reports of a probe that no longer counts change nothing
    assert b.closed and b.admit_probe()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="failures >= 1"):
        CircuitBreaker("x", failures=0)


# -- the core behind the breaker --------------------------------------------------------------------


class _Triton:
    """A Triton whose infer fails as told: ``mode`` is ok, timeout, down, refuses (4xx) or missing (no such version)."""

    name = "triton"

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.calls = 0
        self.ready_calls = 0

    async def infer(self, model: str, version: int, inputs: list[Tensor], outputs: list[str] | None, *,
                    timeout_s: float, request_id: str = "") -> list[Tensor]:
        self.calls += 1
        await asyncio.sleep(0)  # other callers run while this call is out
        if self.mode == "timeout":
            raise BackendTimeout(f"Triton did not answer for {model} v{version} in time; retry later")
        if self.mode == "down":
            raise BackendUnavailable("Triton at the configured URL is unreachable (connection refused)")
        if self.mode == "refuses":
            raise InvalidInput("Triton refused the request: unexpected shape")
        if self.mode == "missing" or (self.mode == "v1-only" and version != 1):
            raise ModelNotFound(f"Triton does not serve {model} v{version}: Request for unknown model: "
                                f"'{model}' version {version} is not found")
        return [Tensor("y", "FP32", np.full((inputs[0].shape[0], 1), float(version), np.float32))]

    async def signature(self, model: str, version: int) -> Signature:
        return Signature([Spec("x", "FP32", (-1, 4))], [Spec("y", "FP32", (-1, 1))], 8)

    async def ready(self) -> bool:
        self.ready_calls += 1
        return self.mode not in ("timeout", "down")

    async def model_ready(self, model: str, version: int) -> bool:
        return self.mode == "ok"

    async def close(self) -> None:
        pass


class _Onnx(_Triton):
    name = "onnxruntime"

    def __init__(self, versions: set[int] | None = None) -> None:
        super().__init__()
        self.versions = versions

    async def infer(self, model: str, version: int, inputs: list[Tensor], outputs: list[str] | None, *,
                    timeout_s: float, request_id: str = "") -> list[Tensor]:
        if self.versions is not None and version not in self.versions:
            raise ModelNotFound(f"the fallback has no model.onnx for {model} v{version}")
        return await super().infer(model, version, inputs, outputs, timeout_s=timeout_s, request_id=request_id)


def _core(triton: _Triton, fallback: _Triton | None = None, *, route: ModelRoute | None = None,
          name: str = "core") -> tuple[InferenceService, Clock]:
    clock = Clock()
    stats = CanaryStats()
    mirror = ShadowMirror(lambda *a: asyncio.sleep(0, []), lambda *a: None, queue_size=10, workers=1)
    service = InferenceService(rollout=FixedRollout(route or ModelRoute("m", champion=1)),  # type: ignore[arg-type]
                               backend=triton, fallback=fallback, mirror=mirror, predictions=NullSink(),  # type: ignore[arg-type]
                               stats=stats, labels=LabelJoin(stats, 10), store=None,  # type: ignore[arg-type]
                               timeout_s=0.3, max_inflight=64, clock=clock,
                               breaker=CircuitBreaker(name, failures=3, cooldown_s=2.0, probe_timeout_s=2.0,
                                                      clock=clock))
    return service, clock


async def _status(service: InferenceService, **kwargs: Any) -> tuple[int, str]:
    try:
        result = await service.infer(InferRequest(model="m", inputs=X, **kwargs))
    except Exception as exc:
        return http_status(exc), str(exc)
    return 200, result.backend


async def test_a_frozen_triton_is_skipped_once_the_breaker_opens_and_one_probe_finds_it_again() -> None:
    triton = _Triton("timeout")
    service, clock = _core(triton, name="core-frozen")
    assert [(await _status(service))[0] for _ in range(3)] == [504, 504, 504]
    status, body = await _status(service)
    assert status == 503 and "circuit breaker open" in body and "Triton" in body
    assert triton.calls == 3                    # turned away without calling Triton
    assert [(await _status(service))[0] for _ in range(20)] == [503] * 20 and triton.calls == 3
    ok, reason = await service.ready()
    assert not ok and "circuit breaker open" in reason and triton.ready_calls == 0   # answered without asking
    clock.now += 2.0
    # Many callers at once after the cooldown: exactly one probes (and waits out its deadline).
    results = await asyncio.gather(*(_status(service) for _ in range(10)))
    assert triton.calls == 4 and sorted(s for s, _ in results) == [503] * 9 + [504]
    assert _sample("inference_breaker_probes_total", backend="core-frozen", kind="request", outcome="failed") == 1
    triton.mode = "ok"
    assert (await _status(service))[0] == 503   # a new cooldown
    clock.now += 2.0
    assert await _status(service) == (200, "triton")
    assert service.breaker.closed and [(await _status(service))[0] for _ in range(5)] == [200] * 5
    assert _sample("inference_breaker_probes_total", backend="core-frozen", kind="request", outcome="ok") == 1


async def test_with_the_fallback_the_open_breaker_goes_straight_to_it_and_readiness_probes() -> None:
    triton = _Triton("down")
    service, clock = _core(triton, _Onnx(), name="core-fallback")
    before = _sample("inference_fallback_total", model="m", reason="breaker_open")
    assert {await _status(service) for _ in range(10)} == {(200, "onnxruntime")}
    assert triton.calls == 3
    assert _sample("inference_fallback_total", model="m", reason="breaker_open") == before + 7
    ok, reason = await service.ready()
    assert ok and "circuit breaker open" in reason and "fallback" in reason
    with pytest.raises(BreakerOpen):                       # mirrors never wait on it either
        await service.run_mirror("m", 1, X, None)
    triton.mode = "ok"
    clock.now += 2.0
    ok, reason = await service.ready()                     # no request came: readiness is the probe
    assert ok and reason == "ready" and triton.ready_calls == 1 and service.breaker.closed
    assert _sample("inference_breaker_probes_total", backend="core-fallback", kind="health", outcome="ok") == 1
    assert await _status(service) == (200, "triton")


async def test_refusals_of_the_request_are_answers_not_backend_failures() -> None:
    triton = _Triton("refuses")
    service, _ = _core(triton, name="core-4xx")
    assert {(await _status(service))[0] for _ in range(10)} == {400}
    triton.mode = "missing"
    assert {(await _status(service))[0] for _ in range(10)} == {503}   # Triton lacks the routed version
    assert service.breaker.closed and service.breaker.failures == 0 and triton.calls == 20
    assert (await _status(service, version=7))[0] == 404     # not in the rollout: the caller's error
    assert _sample("inference_breaker_transitions_total", backend="core-4xx", from_state="closed",
                   to_state="open") == 0


async def test_a_probe_refused_for_its_request_still_closes_the_breaker() -> None:
    triton = _Triton("timeout")
    service, clock = _core(triton, name="core-probe-4xx")
    for _ in range(3):
        await _status(service)
    triton.mode = "refuses"
    clock.now += 2.0
    assert (await _status(service))[0] == 400 and service.breaker.closed


async def test_a_routed_version_triton_lacks_is_served_by_the_fallback_or_answered_503() -> None:
    route = ModelRoute("m", champion=1, canary=2, canary_weight=1.0)
    triton = _Triton("v1-only")
    service, clock = _core(triton, _Onnx(), route=route, name="core-missing")
    before = _sample("inference_fallback_total", model="m", reason="not_loaded")
    assert await _status(service) == (200, "onnxruntime")
    assert await _status(service, version=1) == (200, "triton")
    calls = triton.calls
    assert await _status(service) == (200, "onnxruntime") and triton.calls == calls  # remembered for a while
    assert _sample("inference_fallback_total", model="m", reason="not_loaded") == before + 2
    triton.mode = "ok"                                    # Triton loaded it meanwhile
    clock.now += 2.0
    assert await _status(service) == (200, "triton")
    assert service.breaker.closed
    # No fallback: 503, the server's state; nowhere at all: 503 too.
    service, _ = _core(_Triton("v1-only"), route=route, name="core-missing-nofb")
    status, body = await _status(service)
    assert status == 503 and "not loaded" in body and "INFERENCE_FALLBACK=none" in body
    assert http_status(VersionUnavailable("x")) == 503
    service, _ = _core(_Triton("v1-only"), _Onnx({1}), route=route, name="core-missing-nowhere")
    status, body = await _status(service)
    assert status == 503 and "neither Triton nor the fallback" in body
    assert (await _status(service, version=1)) == (200, "triton")
    with pytest.raises(ModelNotFound):                    # a model the routing table does not know
        await service.infer(InferRequest(model="other", inputs=X))
