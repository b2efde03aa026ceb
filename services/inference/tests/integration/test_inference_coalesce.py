"""Coalescing against the real Triton: concurrent requests share calls and each gets its own rows."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from inference.coalesce import Coalescer
from inference.service import InferRequest, InferResult
from inference.settings import Settings
from inference.tensors import Tensor
from prometheus_client import REGISTRY

from services.inference.tests.integration.conftest import MODEL, Gateway, set_rollout, v2_body
from services.inference.tests.onnx_models import reference
from tests.fixtures.triton import TritonServer

pytestmark = pytest.mark.integration


def _calls_and_requests() -> tuple[float, float]:
    labels = {"model": MODEL}
    return (REGISTRY.get_sample_value("inference_coalesced_requests_count", labels) or 0.0,
            REGISTRY.get_sample_value("inference_coalesced_requests_sum", labels) or 0.0)


def test_concurrent_requests_are_coalesced_and_answered_row_for_row(
        served: TritonServer, settings_for: Callable[..., Settings],
        gateway_factory: Callable[[Settings], Gateway]) -> None:
    # `credit` has Triton's dynamic batching, which the default (auto) leaves to Triton: "all" coalesces it.
    gateway = gateway_factory(settings_for(served, coalesce="all"))
    assert isinstance(gateway.service.backend, Coalescer)
    set_rollout(gateway, "champion", 1)
    set_rollout(gateway, "canary", 2, weight=0.5)
    rng = np.random.default_rng(7)
    batches = [rng.normal(size=(1 + i % 3, 4)).astype(np.float32) for i in range(96)]
    calls_before, requests_before = _calls_and_requests()

    async def burst() -> list[InferResult]:
        return await asyncio.gather(*(
            gateway.service.infer(InferRequest(model=MODEL, inputs=[Tensor("x", "FP32", x)], entity=f"c-{i}"))
            for i, x in enumerate(batches)))

    for _ in range(3):  # three bursts of 96 concurrent requests, rows 1-3 each, both versions
        results = gateway.run(burst())
        for x, result in zip(batches, results, strict=True):
            assert result.outputs[0].array.shape == (x.shape[0], 1)
            np.testing.assert_allclose(result.outputs[0].array.reshape(-1),
                                       reference(result.version, x).reshape(-1), rtol=1e-5)
        assert {r.version for r in results} == {1, 2}
    calls, requests = _calls_and_requests()
    # Every request went through the coalescer (and the canary's comparison calls to the champion).
    assert requests - requests_before >= 3 * len(batches)
    assert calls - calls_before < requests - requests_before, "no call carried more than one request"
    # Over REST as well: the rows of one request come back in its order.
    rows = [[float(i), 1.0, -1.0, 0.5] for i in range(3)]
    r = httpx.post(f"{gateway.url}/v2/models/{MODEL}/infer", json=v2_body(rows), headers={"x-tributary-entity": "c-1"})
    assert r.status_code == 200, r.text
    version = int(r.headers["x-tributary-model-version"])
    np.testing.assert_allclose(r.json()["outputs"][0]["data"], reference(version, np.array(rows)).reshape(-1),
                               rtol=1e-5)


def test_by_default_a_version_triton_batches_itself_is_left_to_triton_and_off_switches_it_off(
        gateway: Gateway, served: TritonServer, settings_for: Callable[..., Settings],
        gateway_factory: Callable[[Settings], Gateway]) -> None:
    assert isinstance(gateway.service.backend, Coalescer)
    signature = gateway.run(gateway.service.signature(MODEL, 1))
    assert signature.dynamic_batching and signature.max_batch_size == 64
    calls_before, _ = _calls_and_requests()
    x = np.ones((2, 4), np.float32)

    async def burst() -> list[InferResult]:
        return await asyncio.gather(*(gateway.service.infer(InferRequest(model=MODEL, inputs=[Tensor("x", "FP32", x)]))
                                      for _ in range(16)))

    for result in gateway.run(burst()):
        np.testing.assert_allclose(result.outputs[0].array.reshape(-1), reference(1, x).reshape(-1), rtol=1e-5)
    assert _calls_and_requests()[0] == calls_before  # not one call through the coalescer
    off = gateway_factory(settings_for(served, coalesce="off"))
    assert not isinstance(off.service.backend, Coalescer)
    result = off.run(off.service.infer(InferRequest(model=MODEL, inputs=[Tensor("x", "FP32", x)])))
    np.testing.assert_allclose(result.outputs[0].array.reshape(-1), reference(1, x).reshape(-1), rtol=1e-5)
