"""Ingest and the inference gateway under load at the same time (issue 8.4, the short form of
``python -m bench load``), on the session's broker, Redis and Triton.

The registry, ingest and the gateway run as processes (``bench.load.LoadServices``); a model is
registered and made champion through the registry, and an open-loop client offers 200 events/s
(batches of 20) to ingest and 50 requests/s to the gateway for 25 s.

Pass criteria (exact; no assertion on throughput or latency, which are the benchmark's):
- zero errors: every request sent got a 2xx (no other status, no exception, none left unsent);
- every event ingest acknowledged is in the feature topic, read back from the beginning
  (L = acked - observed = 0, and nothing of the dataset there that was not acknowledged);
- the RSS of each service (with its children) grew by at most its bound
  (``bench.load.RSS_GROWTH_BOUND_MIB``) from the first third of the run to the last;
- every service is still the process that started.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.load import RSS_GROWTH_BOUND_MIB, LoadServices, MemorySampler, Offered, drive, window_s
from deploy.localstack import StartError
from schemas import topics
from tests.fixtures.triton import TritonServer
from tests.reliability.processes import Record, check_ledger, read_topic

pytestmark = pytest.mark.integration

DURATION_S = 25.0
OFFERED = Offered(ingest_batches_per_s=10, batch_events=20, infer_per_s=50, max_outstanding=1000, timeout_s=60)


def test_ingest_and_inference_at_once_answer_every_request_lose_nothing_and_stay_bounded(
        kafka_bootstrap: str, redis_url: str, triton: TritonServer, tmp_path: Path) -> None:
    # Generous service deadlines: the criteria are about correctness, not speed on two busy cores.
    services = LoadServices(tmp_path, bootstrap=kafka_bootstrap, redis_url=redis_url, triton=triton,
                            gateway_env={"INFERENCE_BACKEND_TIMEOUT_S": "20", "INFERENCE_MAX_INFLIGHT": "2000"})
    try:
        try:
            services.start()
        except StartError as exc:
            pytest.fail(str(exc), pytrace=False)
        pids = services.pids()
        sampler = MemorySampler(pids)
        sampler.start()
        try:
            result = asyncio.run(drive(ingest_url=services.urls["ingest"], gateway_url=services.urls["inference"],
                                       model=services.model, dataset=services.dataset, duration_s=DURATION_S,
                                       offered=OFFERED))
        finally:
            sampler.stop()
        alive = {p.name: p.process is not None and p.process.poll() is None and p.process.pid == pids[p.name]
                 for p in services.started}
    finally:
        services.stop()

    def mine(r: Record) -> bool:
        payload = r.value.get("payload")
        return isinstance(payload, dict) and payload.get("dataset") == services.dataset

    records = read_topic(kafka_bootstrap, topics.FEATURES, match=mine, timeout_s=120)
    verdict = check_ledger(result.acked_event_ids, records,
                           seq_of=lambda p: int(str(p["event_id"]).rsplit("-", 1)[1]))
    growth = sampler.growth(window_s(result.duration_s))
    print(f"ingest: sent {result.ingest.sent} batches, ok {result.ingest.ok}; inference: sent "
          f"{result.inference.sent}, ok {result.inference.ok}; acked={verdict.acked} observed={verdict.observed} "
          f"D_raw={verdict.raw_duplicates}; RSS first->last third (MiB): "
          f"{ {n: (round(a), round(b)) for n, (a, b) in growth.items()} }")

    assert dict(result.ingest.errors) == {} and dict(result.inference.errors) == {}
    expected_batches = round(DURATION_S * OFFERED.ingest_batches_per_s)
    expected_requests = round(DURATION_S * OFFERED.infer_per_s)
    assert result.ingest.ok == result.ingest.sent == expected_batches
    assert result.inference.ok == result.inference.sent == expected_requests
    assert verdict.acked == expected_batches * OFFERED.batch_events
    assert verdict.lost == set()
    assert verdict.observed == verdict.acked               # nothing of the dataset that was not acknowledged
    over = {n: round(last - first, 1) for n, (first, last) in growth.items() if last - first > RSS_GROWTH_BOUND_MIB[n]}
    assert over == {}, f"RSS grew beyond the bound: {over} (bounds {RSS_GROWTH_BOUND_MIB})"
    assert alive == {"registry": True, "ingest": True, "inference": True}
