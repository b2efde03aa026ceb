"""G7, healthy-but-broken canary: a canary version Triton reports ready starts failing every call.

Setup: an open-loop stream of 100 one-row requests a second to the gateway (champion v1, canary v2
at weight 0.25, automatic canary analysis on with its defaults: 5 s rounds, the gateway as the
alias writer). The gateway's inference calls go over Triton's HTTP endpoint through
``fault_proxy.py``; after a healthy stretch the proxy answers every call to v2 with HTTP 500 while
Triton, its health API and v2's readiness stay 200 (server-level health says all is well).

Pass criteria (plan G7):
- the gateway marks the canary failing within 20 canary requests or 5 s of the fault, whichever
  first (``inference_version_marked_failing_total``; counted as canary calls the proxy failed, and
  time), once;
- the canary's weight goes to 0 (the analysis rolls it back: the rollout has no canary) within
  5 s of the fault, and the rollback decision is published with that evidence on the decisions
  topic; the ``TributaryCanaryFailing`` alert (``deploy/prometheus/rules.yml``) reads the counter
  that marked it (the mark ends with the rollback, within a scrape interval);
- Triton's own health said ready throughout (``/v2/health/ready`` and v2's ready): it was never the
  signal;
- no caller sees an error: every answer 200, the failed canary calls answered by the champion
  (``inference_canary_retried_total``).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from deploy.localstack import REPO, http_ok
from services.inference.tests.integration.conftest import MODEL, make_topics
from tests.fixtures.triton import TritonServer
from tests.reliability.paced_load import PacedLoad, status_summary
from tests.reliability.processes import metric_sum, metrics_of, proxied_gateway, read_topic, set_rollout

pytestmark = pytest.mark.integration

CANARY = 2
WEIGHT = 0.25
HEALTHY_S = 5.0
AFTER_S = 10.0


def test_a_ready_canary_that_fails_every_call_is_marked_and_rolled_back_and_costs_callers_nothing(
        private_triton: TritonServer, fault_proxy: str, kafka_bootstrap: str, redis_url: str,
        tmp_path: Path) -> None:
    decisions_topic = f"test.decisions.{uuid.uuid4().hex[:8]}"
    make_topics(kafka_bootstrap, decisions_topic)
    gateway, url = proxied_gateway(private_triton, fault_proxy, kafka_bootstrap, redis_url, tmp_path,
                                   versions=(1, CANARY), INFERENCE_CANARY_ANALYSIS="true",
                                   INFERENCE_CANARY_DECISIONS_TOPIC=decisions_topic)
    set_rollout(url, MODEL, "champion", 1, reason="G7")
    set_rollout(url, MODEL, "canary", CANARY, weight=WEIGHT, reason="G7")

    load = PacedLoad(url).start()
    marked_at = rolled_back_at = None
    triton_ready: list[bool] = []
    rule = next(r for g in yaml.safe_load((REPO / "deploy/prometheus/rules.yml").read_text())["groups"]
                for r in g["rules"] if r.get("alert") == "TributaryCanaryFailing")
    try:
        time.sleep(HEALTHY_S)
        healthy = metrics_of(url)
        assert metric_sum(healthy, "inference_requests_total", route="canary", status="200") > 0, "no canary traffic"
        r = httpx.put(f"{fault_proxy}/__fault", json={"model": MODEL, "version": CANARY, "mode": "error"}, timeout=10)
        assert r.status_code == 200, r.text
        fault_at = time.monotonic()
        while time.monotonic() < fault_at + AFTER_S:
            now = time.monotonic()
            metrics = metrics_of(url)
            if marked_at is None and metric_sum(metrics, "inference_version_marked_failing_total", model=MODEL) >= 1:
                marked_at = now
            if rolled_back_at is None and httpx.get(f"{url}/v1/rollout/{MODEL}", timeout=5).json()["canary"] is None:
                rolled_back_at = now
            triton_ready.append(http_ok(f"{private_triton.http_url}/v2/health/ready")
                                and http_ok(f"{private_triton.http_url}/v2/models/{MODEL}/versions/{CANARY}/ready"))
            time.sleep(0.1)
    finally:
        load.stop()
    end = metrics_of(url)
    taken = httpx.get(f"{fault_proxy}/__fault", timeout=10).json()["taken"]
    decisions = read_topic(kafka_bootstrap, decisions_topic)
    gateway.stop()

    failed_canary_calls = taken.get(f"{MODEL}/{CANARY}:error", 0)
    retried = metric_sum(end, "inference_canary_retried_total", model=MODEL)
    rollbacks = [d.value.get("payload", {}) for d in decisions
                 if d.value.get("payload", {}).get("action") == "rollback"]
    print(f"marked failing {None if marked_at is None else f'{marked_at - fault_at:.2f}s'} after the fault, "
          f"rolled back {None if rolled_back_at is None else f'{rolled_back_at - fault_at:.2f}s'} after; canary calls "
          f"failed by the proxy {failed_canary_calls}, retried on the champion {retried:.0f}; Triton ready "
          f"{sum(triton_ready)}/{len(triton_ready)}; answers {status_summary(load.answers)}; rollback reasons "
          f"{[d.get('reasons') for d in rollbacks]}")

    assert load.failures == [], load.failures[:3]
    assert marked_at is not None, f"the canary was never marked failing; gateway log:\n{gateway.tail()}"
    assert retried <= 20 or marked_at - fault_at <= 5.0, (retried, marked_at - fault_at)
    assert rolled_back_at is not None and rolled_back_at - fault_at <= 5.0, rolled_back_at
    assert len(rollbacks) == 1 and any("stopped routing to the canary" in r for r in rollbacks[0]["reasons"]), rollbacks
    assert rollbacks[0]["canary"]["version"] == CANARY and rollbacks[0]["weight_after"] == 0, rollbacks
    # The alert reads the counter (the mark itself lasts well under a scrape interval: the rollback ends it).
    assert metric_sum(end, "inference_version_marked_failing_total", model=MODEL) == 1, end
    assert "increase(inference_version_marked_failing_total[" in rule["expr"], rule
    assert all(triton_ready), "Triton's health said not ready during the fault: it was not healthy-but-broken"
    assert {a.status for a in load.answers} == {200}, status_summary([a for a in load.answers if a.status != 200])
    # Every canary request that failed was answered by the champion; the proxy also saw the gate's
    # synthetic requests to the failing canary when a readiness round fell before the rollback.
    # (5 in a row mark it; requests already on their way to the canary then fail too: at most 20 in all.)
    assert 5 <= retried <= 20 and failed_canary_calls >= retried, (retried, failed_canary_calls)
