"""Shadow mirroring and the automatic canary analysis against real Triton, Redis and Kafka."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from inference.service import InferRequest
from inference.settings import Settings
from inference.tensors import Tensor

from services.inference.tests.integration.conftest import (
    GATEWAY_PRINCIPAL,
    MODEL,
    Gateway,
    Registry,
    set_rollout,
    v2_body,
)
from services.inference.tests.onnx_models import FAILING
from tests.fixtures.kafka import consume
from tests.fixtures.triton import TritonServer

pytestmark = pytest.mark.integration

ROW = np.array([[0.2, 0.4, 0.6, 0.8]], dtype=np.float32)


def _latencies(g: Gateway, n: int) -> list[float]:
    out = []
    with httpx.Client(timeout=10) as client:
        for i in range(n):
            started = time.perf_counter()
            r = client.post(f"{g.url}/v2/models/{MODEL}/infer", json=v2_body(ROW.tolist()),
                            headers={"x-tributary-entity": f"lat-{i}"})
            out.append(time.perf_counter() - started)
            assert r.status_code == 200
    return out


def test_shadow_adds_no_latency_and_is_compared_and_published(gateway: Gateway, kafka_bootstrap: str) -> None:
    _latencies(gateway, 50)  # warm up
    off = statistics.median(_latencies(gateway, 300))
    set_rollout(gateway, "shadow", 4)
    on = statistics.median(_latencies(gateway, 300))
    # The caller never waits for the mirror; only CPU sharing on a 2-core box may show.
    assert on <= off * 1.3 + 0.0005, (off, on)
    mirror = gateway.service.mirror
    assert gateway.run(mirror.idle(30))
    assert mirror.completed >= 300
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'inference_divergence_count{kind="shadow",model="credit"}' in metrics
    shadowed = consume(kafka_bootstrap, "inference.prediction-event.v1", count=1,
                       match=lambda m: json.loads(m.value())["payload"]["route"] == "shadow"
                       and json.loads(m.value())["payload"]["model_version"] == 4)
    assert shadowed


def test_shadow_overflow_is_counted_not_hidden(served: TritonServer, settings_for: Callable[..., Settings],
                                               gateway_factory: Callable[[Settings], Gateway]) -> None:
    g = gateway_factory(settings_for(served, shadow_queue_size=2, shadow_workers=1))
    set_rollout(g, "champion", 1)
    set_rollout(g, "shadow", 2)

    async def burst() -> None:
        await asyncio.gather(*(g.service.infer(InferRequest(model=MODEL, inputs=[Tensor("x", "FP32", ROW)]))
                               for _ in range(200)))

    g.run(burst())
    assert g.service.mirror.dropped > 0
    assert g.run(g.service.mirror.idle(30))
    assert g.service.mirror.completed + g.service.mirror.dropped == 200
    assert 'inference_shadow_dropped_total{kind="shadow",model="credit"}' in httpx.get(f"{g.url}/metrics").text


def _drive(g: Gateway, stop: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    i = 0
    with httpx.Client(timeout=10) as client:
        while not stop():
            assert time.monotonic() < deadline, (g.service.rollout.table.get(MODEL), g.app.state.analyzer.decisions,
                                                 g.app.state.analyzer.pending)
            # Rows on which the versions' answers differ (v4 agrees with v1 on ROW).
            client.post(f"{g.url}/v2/models/{MODEL}/infer", json=v2_body([[1.0, 2.0, 3.0, float(i % 7)]]),
                        headers={"x-tributary-entity": f"e-{i}"})
            i += 1


def _analysis(served: TritonServer, settings_for: Callable[..., Settings], registry: Registry,
              **overrides: object) -> Settings:
    return settings_for(served, canary_analysis=True, canary_interval_s=0.3, canary_min_requests=30,
                        canary_min_requests_rollback=10, canary_min_compared=10, registry_url=registry.url,
                        registry_token=registry.gateway_token, **overrides)


def _serves(g: Gateway, champion: int, canary: int | None, weight: float | None = None) -> Callable[[], bool]:
    def check() -> bool:
        r = g.service.rollout.table.get(MODEL)
        return (r is not None and r.champion == champion and r.canary == canary
                and (weight is None or abs(r.canary_weight - weight) < 1e-9))
    return check


@pytest.mark.parametrize(("bad", "why"), [(3, "calls in a row failed"), (4, "differ from the champion")])
def test_a_bad_canary_is_rolled_back_through_the_registry_with_its_evidence(
        bad: int, why: str, served: TritonServer, settings_for: Callable[..., Settings], registry: Registry,
        gateway_factory: Callable[[Settings], Gateway], kafka_bootstrap: str, topics: dict[str, str]) -> None:
    g = gateway_factory(_analysis(served, settings_for, registry))
    registry.set_alias("champion", 1)
    registry.set_alias("canary", bad, weight=0.5)
    g.wait_for(_serves(g, 1, bad, 0.5), message="the registry's aliases never reached the gateway")
    _drive(g, _serves(g, 1, None))
    # The registry made the change: its records say what serves, and name the gateway as the author.
    assert set(registry.aliases()) == {"champion"} and registry.aliases()["champion"]["version"] == 1
    removal = registry.history("canary")[-1]
    assert removal["version"] is None and removal["previous_version"] == bad
    assert removal["changed_by"] == GATEWAY_PRINCIPAL and why in removal["reason"]
    decision = json.loads(consume(kafka_bootstrap, topics["decisions"], count=1, match=lambda m: json.loads(
        m.value())["payload"]["action"] == "rollback")[0].value())["payload"]
    assert decision["weight_after"] == 0
    assert decision["canary"]["version"] == bad and any(why in r for r in decision["reasons"])
    # What the gateway serves came from the registry's own event on the rollout topic.
    [event] = consume(kafka_bootstrap, topics["rollout"], count=1, match=lambda m: (
        json.loads(m.value())["payload"]["alias"] == "canary" and json.loads(m.value())["payload"]["version"] is None))
    assert json.loads(event.value())["source"] == "registry"
    assert json.loads(event.value())["payload"]["changed_by"] == GATEWAY_PRINCIPAL


def test_a_good_canary_steps_up_and_is_promoted_in_the_registry(
        served: TritonServer, settings_for: Callable[..., Settings], registry: Registry,
        gateway_factory: Callable[[Settings], Gateway], kafka_bootstrap: str, topics: dict[str, str]) -> None:
    # Latency on a shared 2-core box is noisy over 30 requests: this test is about stepping, not latency.
    g = gateway_factory(_analysis(served, settings_for, registry, canary_steps=[0.25, 0.5, 1.0],
                                  canary_p99_slack_ms=200))
    registry.set_alias("champion", 1)
    registry.set_alias("canary", 2, weight=0.25)
    g.wait_for(_serves(g, 1, 2, 0.25), message="the registry's aliases never reached the gateway")
    _drive(g, _serves(g, 2, None), timeout_s=90)
    decisions = [json.loads(m.value())["payload"] for m in consume(kafka_bootstrap, topics["decisions"], count=3)]
    assert [(d["action"], d["weight_after"]) for d in decisions] == [("step", 0.5), ("step", 1.0), ("promote", 0.0)]
    # The registry holds the outcome (the next retrain gates against v2) and every step of the way.
    aliases = registry.aliases()
    assert set(aliases) == {"champion"} and aliases["champion"]["version"] == 2
    assert [(c["version"], c["weight"]) for c in registry.history("canary")] == [
        (2, 0.25), (2, 0.5), (2, 1.0), (None, None)]
    assert [c["changed_by"] for c in registry.history("canary")][1:] == [GATEWAY_PRINCIPAL] * 3
    assert registry.history("champion")[-1]["changed_by"] == GATEWAY_PRINCIPAL


def test_a_decision_is_kept_and_retried_while_the_registry_is_down(
        served: TritonServer, settings_for: Callable[..., Settings], registry: Registry,
        gateway_factory: Callable[[Settings], Gateway], kafka_bootstrap: str, topics: dict[str, str]) -> None:
    g = gateway_factory(_analysis(served, settings_for, registry, registry_timeout_s=1, registry_retries=1,
                                  registry_retry_backoff_s=0.05))
    registry.set_alias("champion", 1)
    registry.set_alias("canary", FAILING, weight=0.5)
    g.wait_for(_serves(g, 1, FAILING, 0.5), message="the registry's aliases never reached the gateway")
    registry.process.stop()
    analyzer = g.app.state.analyzer
    _drive(g, lambda: MODEL in analyzer.pending and analyzer.pending[MODEL].attempts >= 3)
    # Decided and published, not yet carried out: the gateway does not change what serves by itself.
    assert [d.action for d in analyzer.decisions] == ["rollback"]
    assert not analyzer.pending[MODEL].applied
    assert _serves(g, 1, FAILING, 0.5)()
    assert consume(kafka_bootstrap, topics["decisions"], count=1)
    registry.process.start()
    g.wait_for(_serves(g, 1, None), timeout_s=60, message="the kept rollback was not made once the registry returned")
    assert set(registry.aliases()) == {"champion"}
    assert registry.history("canary")[-1]["changed_by"] == GATEWAY_PRINCIPAL
    assert [d.action for d in analyzer.decisions] == ["rollback"]
    # The next round sees the rollout show the change, and the kept decision is done.
    g.wait_for(lambda: MODEL not in analyzer.pending, message="the carried-out decision stayed pending")
