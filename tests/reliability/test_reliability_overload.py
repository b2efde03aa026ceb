"""G4 overload shedding at Triton's queue: a bounded queue refuses at once, the gateway says 429.

The registry writes the model's ``config.pbtxt`` with a bounded dynamic-batching queue
(``REGISTRY_TRITON_MAX_QUEUE_SIZE``, here 1, with a 20 ms batching delay so that requests wait
in it); the real Triton loads it, and bursts of 24 concurrent callers, many times over the
queue's room, goes through the gateway. Pass criteria (plan G4, the shedding part):

- every answer is 200 or 429; every 429 carries ``Retry-After`` and says Triton's queue is full;
- the fault took effect: some requests were refused, and the gateway counted each in
  ``inference_shed_total{reason="backend_queue"}``;
- a refusal is fast: the median 429 is answered within 50 ms (p99 and the slowest are reported);
- every 200 carries the model's own output for its row (admitted requests are served right);
- a refusal is an answer, not a failure of Triton: the circuit breaker stays closed and the
  gateway stays ready.

The plan's throughput part (offer 3x the sustainable rate for 60 s: goodput >= 0.8 of it, admitted
p99 within twice the baseline's) is ``test_reliability_overload_throughput.py``.
"""

from __future__ import annotations

import io
import statistics
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from registry.domain import Signature
from registry.triton_repo import TritonRepository
from schemas.registry import TensorSpec

from services.inference.tests.integration.conftest import make_topics, v2_body
from services.inference.tests.onnx_models import WEIGHTS, logistic_onnx, reference
from tests.fixtures.triton import TritonServer, add_model
from tests.reliability.processes import gateway_process, wait_for

pytestmark = pytest.mark.integration

CALLERS, ROUNDS = 24, 6
SIGNATURE = Signature(inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 4])],
                      outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 1])])


def _metric(text: str, name: str, labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and labels in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_full_triton_queue_is_shed_with_fast_429s_and_admitted_requests_are_served(
        triton: TritonServer, kafka_bootstrap: str, redis_url: str, tmp_path: Path) -> None:
    model = f"queue{uuid.uuid4().hex[:6]}"
    repo = TritonRepository(tmp_path / "registry-repo", max_batch_size=2, max_queue_delay_us=20_000,
                            max_queue_size=1)
    repo.write_version(model, 1, io.BytesIO(logistic_onnx(*WEIGHTS[1])))
    config = repo.write_config(model, SIGNATURE, versions=[1]).read_text()
    assert "max_queue_size: 1" in config, config
    add_model(triton, repo.root, model, versions=[1])

    rollout_topic = f"test.rollout.{uuid.uuid4().hex[:8]}"
    make_topics(kafka_bootstrap, rollout_topic)
    gateway = gateway_process(triton.grpc_url, kafka_bootstrap, redis_url, repo.root, tmp_path,
                              rollout_topic=rollout_topic, INFERENCE_TRITON_HTTP_URL=triton.http_url,
                              INFERENCE_BACKEND_TIMEOUT_S="5", INFERENCE_MAX_INFLIGHT="256")
    gateway.start()
    try:
        url = gateway.ready_url.rsplit("/", 1)[0]
        r = httpx.put(f"{url}/v1/rollout/{model}", json={"alias": "champion", "version": 1, "reason": "G4"},
                      timeout=10)
        assert r.status_code == 200, r.text
        rows = [[float(i), 1.0, -1.0, 0.5] for i in range(CALLERS)]
        wait_for(lambda: httpx.post(f"{url}/v2/models/{model}/infer", json=v2_body(rows[:1]),
                                    timeout=10).status_code == 200, "the gateway serving the model", 30)
        shed_before = _metric(httpx.get(f"{url}/metrics", timeout=10).text, "inference_shed_total",
                              'reason="backend_queue"')

        answers: list[tuple[int, float, int, httpx.Response]] = []
        lock = threading.Lock()

        def caller(i: int, start: threading.Barrier) -> None:
            with httpx.Client(timeout=30) as client:
                start.wait()
                t0 = time.perf_counter()
                response = client.post(f"{url}/v2/models/{model}/infer", json=v2_body([rows[i]]))
                elapsed = time.perf_counter() - t0
            with lock:
                answers.append((i, elapsed, response.status_code, response))

        for _ in range(ROUNDS):
            start = threading.Barrier(CALLERS)
            threads = [threading.Thread(target=caller, args=(i, start)) for i in range(CALLERS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)

        assert len(answers) == CALLERS * ROUNDS
        statuses = {status for _, _, status, _ in answers}
        assert statuses <= {200, 429}, {s: next(r.text for _, _, st, r in answers if st == s) for s in statuses}
        refused = [(elapsed, r) for _, elapsed, status, r in answers if status == 429]
        served = [(i, r) for i, _, status, r in answers if status == 200]
        assert refused, f"no request was refused: the queue of 1 never overflowed ({len(served)} served)"
        assert served, "no request was served"
        for _, r in refused:
            assert r.headers.get("retry-after") == "1", r.headers
            assert "queue" in r.json()["error"].lower(), r.text
        for i, r in served:
            np.testing.assert_allclose(r.json()["outputs"][0]["data"],
                                       reference(1, np.array([rows[i]])).reshape(-1), rtol=1e-5)
        times = sorted(elapsed for elapsed, _ in refused)
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        print(f"G4: {len(served)} served, {len(refused)} refused with 429; 429 answered in median "
              f"{statistics.median(times) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, slowest {times[-1] * 1000:.1f} ms")
        assert statistics.median(times) <= 0.05, f"429s took {statistics.median(times) * 1000:.1f} ms at the median"

        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert _metric(metrics, "inference_shed_total", 'reason="backend_queue"') - shed_before == len(refused)
        ready = httpx.get(f"{url}/v2/health/ready", timeout=10)
        assert ready.status_code == 200 and ready.json()["breaker"] == "closed", ready.text
    finally:
        gateway.stop()
