"""Against a real Triton: a routed version Triton has not loaded, and the breaker's view of such answers.

The routing table names a version (an approved one: the registry's repository has its file) that
Triton does not serve. That is the server's state, not the caller's error: with the fallback the
version is answered by onnxruntime and counted (``reason="not_loaded"``); without it, 503 with
``Retry-After``. Either way Triton answered, so the circuit breaker stays closed. A model the
routing table does not know stays 404.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from inference.settings import Settings
from prometheus_client import REGISTRY

from services.inference.tests.integration.conftest import Gateway, v2_body
from services.inference.tests.onnx_models import WEIGHTS, logistic_onnx, reference, write_registry_model
from tests.fixtures.triton import TritonServer, add_model

pytestmark = pytest.mark.integration

ROW = [[1.0, 2.0, 3.0, 4.0]]


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_version_triton_has_not_loaded_is_served_by_the_fallback_or_answered_503(
        triton: TritonServer, tmp_path: Path, settings_for: Callable[..., Settings],
        gateway_factory: Callable[[Settings], Gateway]) -> None:
    model = f"partial{uuid.uuid4().hex[:6]}"
    graphs = {v: logistic_onnx(*WEIGHTS[v]) for v in (1, 2)}
    served_by_triton = tmp_path / "triton-source"
    write_registry_model(served_by_triton, model, {1: graphs[1]})      # Triton loads v1 only
    add_model(triton, served_by_triton, model, versions=[1])
    registry_repo = tmp_path / "registry-repo"
    write_registry_model(registry_repo, model, graphs)                 # the registry has both

    def gateway(fallback: str) -> Gateway:
        g = gateway_factory(settings_for(triton, fallback=fallback, model_repository=registry_repo,
                                         breaker_failures=3))
        r = httpx.put(f"{g.url}/v1/rollout/{model}", json={"alias": "champion", "version": 2, "reason": "test"},
                      timeout=10)
        assert r.status_code == 200, r.text
        return g

    def infer(g: Gateway, version: int | None = None) -> httpx.Response:
        path = f"/v2/models/{model}/infer" if version is None else f"/v2/models/{model}/versions/{version}/infer"
        return httpx.post(f"{g.url}{path}", json=v2_body(ROW), timeout=10)

    opened = {"backend": "triton", "from_state": "closed", "to_state": "open"}
    opened_before = _sample("inference_breaker_transitions_total", opened)
    fallbacks_before = _sample("inference_fallback_total", {"model": model, "reason": "not_loaded"})

    # Without the fallback: 503 with the reason, every time, and the breaker stays closed.
    g = gateway("none")
    answers = [infer(g) for _ in range(6)]
    assert {a.status_code for a in answers} == {503}, [a.text for a in answers]
    body = answers[0].json()
    assert body["code"] == "version_unavailable" and "not loaded" in body["error"], body
    assert answers[0].headers["retry-after"] == "1"
    assert infer(g, version=7).status_code == 404                     # not in the routing table
    assert httpx.post(f"{g.url}/v2/models/nosuch{model}/infer", json=v2_body(ROW), timeout=10).status_code == 404
    ready = httpx.get(f"{g.url}/v2/health/ready", timeout=10).json()
    assert ready["breaker"] == "closed" and g.service.breaker.failures == 0, ready

    # With the fallback: onnxruntime answers v2 with v2's numbers; Triton still answers v1.
    g = gateway("onnxruntime")
    answers = [infer(g) for _ in range(6)]
    assert {a.status_code for a in answers} == {200}, [a.text for a in answers]
    assert {a.headers["x-tributary-backend"] for a in answers} == {"onnxruntime"}
    assert {a.headers["x-tributary-model-version"] for a in answers} == {"2"}
    np.testing.assert_allclose(answers[0].json()["outputs"][0]["data"], reference(2, np.array(ROW)).reshape(-1),
                               rtol=1e-5)
    r = infer(g, version=1)
    assert r.status_code == 404                                       # v1 is not in the rollout either
    assert _sample("inference_fallback_total", {"model": model, "reason": "not_loaded"}) == fallbacks_before + 6
    assert _sample("inference_breaker_transitions_total", opened) == opened_before
    assert httpx.get(f"{g.url}/v2/health/ready", timeout=10).json()["breaker"] == "closed"
