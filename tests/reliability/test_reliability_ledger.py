"""Exactly what was acknowledged arrives: a ledger of the ids ingest acknowledged, checked against
the topic read back from the beginning and against the drift service's counters, across
``kill -9`` of ingest and drift in the middle of the stream and a broker killed and restarted.

Pass criteria (plan 6.2 K1, K2, K4): L = acked - observed = 0; per-key order of first
occurrences monotonic; D_fx = 0 (drift counts every event id once, and every window report
once after dedup by report id); ingest serves again within 10 s of a kill; during a broker
outage every answer is 200-after-ack or 503 with Retry-After, within the delivery timeout
+ 1 s; the first 200 within 15 s of the broker's return; ingest never restarted and its RSS
grows < 100 MB.

The feature topic is shared by the session's tests and other drift deployments may be consuming
it (the e2e closed loop's, with windows of 60, lives until the session ends): every one of them
publishes reports keyed by this test's dataset, with the same ids for its own windows. The
window check therefore reads only the reports whose header names this test's drift.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from drift.kafka import APP_ID_HEADER

from deploy.localstack import Broker
from schemas import topics
from tests.reliability.processes import (
    FeatureClient,
    Record,
    check_ledger,
    drift_process,
    ingest_process,
    kill9,
    port_of,
    read_topic,
    register_dataset,
    restart,
    rss_mb,
    wait_for,
)

pytestmark = pytest.mark.integration

TOTAL = 1200
WINDOW = 100


def drift_events(port: int, dataset: str) -> int:
    try:
        status = httpx.get(f"http://127.0.0.1:{port}/v1/drift/status", timeout=5).json()
    except httpx.HTTPError:
        return -1
    return next((int(d["events"]) for d in status["datasets"] if d["dataset"] == dataset), 0)


def test_kill_9_of_ingest_and_drift_mid_stream_loses_nothing_acknowledged_and_counts_each_event_once(
        kafka_bootstrap: str, tmp_path: Path, unique: str) -> None:
    dataset, app_id = f"ledger-{unique}", f"drift-ledger-{unique}"
    ingest = ingest_process(kafka_bootstrap, tmp_path, INGEST_DELIVERY_TIMEOUT_S="5")
    drift = drift_process(kafka_bootstrap, tmp_path, app_id, DRIFT_WINDOW_SIZE=str(WINDOW))
    ingest.start()
    drift.start()
    url = f"http://127.0.0.1:{port_of(ingest)}"
    try:
        register_dataset(url, dataset)
        client = FeatureClient(url, dataset, batch=10).start(TOTAL)
        recovery: list[float] = []
        drift_restart: threading.Thread | None = None
        for at, victim in ((300, ingest), (600, drift), (900, ingest)):
            wait_for(lambda at=at: client.count() >= at, f"{at} acknowledged events", 120)  # type: ignore[misc]
            killed_at = time.monotonic()
            kill9(victim)
            if victim is drift:
                # the stream goes on while drift comes back (its group waits out the dead member's session)
                drift_restart = threading.Thread(target=restart, args=(drift,), daemon=True)
                drift_restart.start()
                continue
            restart(victim)
            first = wait_for(lambda t=killed_at: next(  # type: ignore[misc]
                (a for a in list(client.attempts) if a.started > t and a.status == 200), None),
                "a 200 after the kill", 60)
            recovery.append(first.started + first.seconds - killed_at)
        client.join(180)
        assert drift_restart is not None
        drift_restart.join(180)
        assert drift.process is not None and drift.process.poll() is None, drift.tail()

        records = read_topic(kafka_bootstrap, topics.FEATURES,
                             match=lambda r: mine(r, dataset))
        verdict = check_ledger(client.acked, records, seq_of=lambda p: int(p["features"]["seq"]))
        print(f"acked={verdict.acked} observed={verdict.observed} D_raw={verdict.raw_duplicates} "
              f"recovery={[round(r, 1) for r in recovery]}s attempts={len(client.attempts)}")
        assert verdict.lost == set()
        assert verdict.order_violations == []
        assert verdict.observed == TOTAL == verdict.acked        # the client resent every unacked id
        assert all(r <= 10 for r in recovery), recovery

        # D_fx: the drift service counted every event once, whatever the duplicates in the topic
        drift_port = port_of(drift)
        wait_for(lambda: drift_events(drift_port, dataset) >= TOTAL, f"drift to count {TOTAL} events", 120)
        assert drift_events(drift_port, dataset) == TOTAL
        # every window once, numbered w0..w11 whatever the kill, and nothing beyond (the last
        # report is published just after the event that closed its window is counted)
        expected = {f"{dataset}-w{i}" for i in range(TOTAL // WINDOW)}

        def every_window() -> list[dict[str, Any]] | None:
            found = reports_of(kafka_bootstrap, dataset, app_id)
            return found if expected <= {p["report_id"] for p in found} else None

        reports = wait_for(every_window, lambda: f"drift's reports {sorted(expected)}", 60, every_s=0.5)
        ids = [p["report_id"] for p in reports]
        assert set(ids) == expected, f"window ids after kill -9 of drift: {sorted(set(ids) ^ expected)}"
        by_id: dict[str, dict[str, object]] = {}
        for payload in reports:     # a report published again after the restart is the same report
            assert by_id.setdefault(str(payload["report_id"]), payload) == payload, payload["report_id"]
        sizes = [n for p in reports for n in _ks_sample_sizes(p)]
        assert len(sizes) >= TOTAL // WINDOW - 1 and set(sizes) == {WINDOW}, sizes   # w0 is the bootstrap reference
    finally:
        ingest.stop()
        drift.stop()


def mine(record: Record, dataset: str) -> bool:
    """A feature event of ``dataset`` (the shared topic also holds other tests' records, poison included)."""
    payload = record.value.get("payload") if isinstance(record.value, dict) else None
    return isinstance(payload, dict) and payload.get("dataset") == dataset


def _ks_sample_sizes(report: dict[str, Any]) -> list[int]:
    return [int(r["sample_size"]) for r in report["results"] if r["feature"] == "seq" and r["test"] == "ks"]


def reports_of(bootstrap: str, dataset: str, app_id: str) -> list[dict[str, Any]]:
    """The payloads of every report of ``dataset`` the drift deployment ``app_id`` published, in topic order.

    Reports of the dataset from other deployments (their header names another app id) are left out.
    """
    records = read_topic(bootstrap, topics.DRIFT_REPORTS, match=lambda r: r.key == dataset
                         and r.headers.get(APP_ID_HEADER) == app_id.encode())
    return [r.value["payload"] for r in records]


def test_broker_killed_and_restarted_gives_503_or_acks_and_loses_nothing(
        private_broker: Broker, tmp_path: Path, unique: str) -> None:
    dataset = f"outage-{unique}"
    ingest = ingest_process(private_broker.bootstrap, tmp_path, INGEST_DELIVERY_TIMEOUT_S="5",
                            INGEST_READINESS_TIMEOUT_S="1")
    ingest.start()
    url = f"http://127.0.0.1:{port_of(ingest)}"
    assert ingest.process is not None
    pid = ingest.process.pid
    try:
        register_dataset(url, dataset)
        rss_before = rss_mb(pid)
        client = FeatureClient(url, dataset, batch=10, timeout_s=30).start(1000)
        wait_for(lambda: client.count() >= 200, "200 acknowledged events", 60)
        broker_pid = int((private_broker.data_dir / "broker.pid").read_text())
        os.kill(broker_pid, signal.SIGKILL)
        outage_start = time.monotonic()
        wait_for(lambda: sum(1 for a in client.attempts if a.status == 503) >= 3, "three 503 answers", 60)
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 503 and "Kafka broker unreachable" in ready.json()["reason"]
        private_broker.start()
        back = time.monotonic()
        acked_at_return = client.count()
        wait_for(lambda: client.count() > acked_at_return, "a 200 after the broker returned", 60)
        first_ok = time.monotonic() - back
        client.join(180)

        during = [a for a in client.attempts if a.started >= outage_start and a.started < back]
        assert during, "no request was made during the outage"
        assert all(a.status in (200, 503) for a in during), {(a.status, a.error) for a in during}
        assert all(a.retry_after == "1" for a in during if a.status == 503)
        assert max(a.seconds for a in during) <= 6.0, max(a.seconds for a in during)
        assert first_ok <= 15, first_ok
        assert ingest.process.poll() is None and ingest.process.pid == pid       # never restarted
        assert rss_mb(pid) - rss_before < 100

        records = read_topic(private_broker.bootstrap, topics.FEATURES,
                             match=lambda r: mine(r, dataset))
        verdict = check_ledger(client.acked, records, seq_of=lambda p: int(p["features"]["seq"]))
        print(f"acked={verdict.acked} observed={verdict.observed} D_raw={verdict.raw_duplicates} "
              f"first 200 after return={first_ok:.1f}s during outage={len(during)} requests")
        assert verdict.lost == set()
        assert verdict.order_violations == []
    finally:
        ingest.stop()
