"""Prometheus metrics of the ingest service, defined once per process.

With several worker processes (``INGEST_WORKERS``) every worker writes its samples to
``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` answers for all of them: counters and histograms
add up, gauges say per metric how they combine (``multiprocess_mode``).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

EVENTS = Counter(
    "ingest_events_total",
    "Events handled, by kind (features|labels), origin (http|kafka) and outcome "
    "(accepted|rejected|failed).",
    ["kind", "origin", "outcome"],
)
DEAD_LETTERS = Counter(
    "ingest_dead_letters_total", "Dead-letter records written, by dead-letter topic.", ["topic"]
)
REQUESTS = Counter(
    "ingest_requests_total", "HTTP ingest requests by endpoint and status code.", ["endpoint", "status"]
)
REQUEST_SECONDS = Histogram(
    "ingest_request_seconds",
    "Time from request to answer (after the broker acknowledged), by endpoint.",
    ["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_EVENTS = Histogram(
    "ingest_batch_events", "Events per batch request.", buckets=(1, 10, 50, 100, 500, 1000, 5000, 10000)
)
SHED = Counter("ingest_shed_total", "Requests answered 429 because the producer queue was full.")
PRODUCER_QUEUE = Gauge("ingest_producer_queue", "Records in the producer queue or in flight.",
                       multiprocess_mode="livesum")
DATASETS = Gauge("ingest_datasets", "Dataset specs known to this replica.", multiprocess_mode="livemax")
SPEC_RECORDS_UNREADABLE = Counter(
    "ingest_spec_records_unreadable_total", "Records on the spec topic that could not be read."
)
RAW_ROUNDS = Counter(
    "ingest_raw_rounds_total", "Rounds of the raw-topic validator, by outcome (committed|retried).", ["outcome"]
)


def exposition() -> bytes:
    """The text exposition of this process's metrics, or of every worker's in multiprocess mode."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return generate_latest()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def worker_exited(pid: int) -> None:
    """Drop the live gauges of a worker that stopped (multiprocess mode only)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
