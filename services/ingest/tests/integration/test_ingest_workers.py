"""Several worker processes on one port (INGEST_WORKERS): every event arrives, metrics add up."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from schemas.topics import FEATURES

from deploy.localstack import ServiceProcess, free_port
from tests.fixtures.kafka import consume

from .conftest import make_event, spec_body


def _workers_of(pid: int) -> list[int]:
    """Pids of the worker processes uvicorn spawned under ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"multiprocessing.spawn" in cmdline and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return found


def _accepted_counter(text: str) -> float:
    pattern = r'^ingest_events_total\{kind="features",origin="http",outcome="accepted"\} (\S+)$'
    match = re.search(pattern, text, re.MULTILINE)
    assert match, "no accepted-events counter in /metrics"
    return float(match.group(1))


def test_two_workers_publish_every_event_and_pool_their_metrics(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    service = ServiceProcess(
        "ingest", "ingest",
        {"INGEST_KAFKA_BOOTSTRAP": kafka_bootstrap, "INGEST_PORT": str(port), "INGEST_WORKERS": "2",
         "INGEST_CONSUME_RAW": "false", "INGEST_LOG_JSON": "false",
         "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")},
        ready_url=f"{url}/readyz", log_path=tmp_path / "ingest.log",
    )
    (tmp_path / "metrics").mkdir()
    service.start()
    try:
        assert service.process is not None
        assert len(_workers_of(service.process.pid)) == 2
        dataset = f"credit-{unique}"
        assert httpx.post(f"{url}/v1/datasets", json=spec_body(dataset), timeout=30).status_code == 201
        # The other worker learns the spec from the spec topic: wait until fresh connections
        # (each may land on either worker) keep finding it.
        deadline, streak = time.monotonic() + 30, 0
        while streak < 10:
            assert time.monotonic() < deadline, "a worker never learnt the new dataset spec"
            streak = streak + 1 if httpx.get(f"{url}/v1/datasets/{dataset}", timeout=10).status_code == 200 else 0

        batches = [[make_event(dataset) for _ in range(50)] for _ in range(16)]

        def post(batch: list[dict[str, object]]) -> int:
            # A fresh connection per batch, so that both workers take requests.
            return httpx.post(f"{url}/v1/events/batch", content=json.dumps(batch),
                              headers={"content-type": "application/json"}, timeout=60).status_code

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(post, batches)) == [200] * len(batches)

        wanted = {e["event_id"] for batch in batches for e in batch}
        found = consume(kafka_bootstrap, FEATURES, count=len(wanted),
                        match=lambda m: json.loads(m.value())["event_id"] in wanted)
        assert {json.loads(m.value())["event_id"] for m in found} == wanted

        # Whichever worker answers the scrape, the counter is the sum over both workers.
        for _ in range(4):
            assert _accepted_counter(httpx.get(f"{url}/metrics", timeout=10).text) == len(wanted)
    finally:
        service.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=2)
