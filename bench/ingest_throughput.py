"""Ingest batch endpoint against a raw confluent-kafka producer, same events, same broker, same run.

Both sides wait for the broker's acknowledgement (``acks=all``, idempotent producer): ingest
answers a batch only after every record of it was acknowledged, and the raw producer counts
delivery reports until all are in. The ingest side pays for HTTP, JSON decoding, validation
against the dataset spec, the envelope and the delivery wait; the raw side sends the producer's
own JSON as it is.

Ingest runs with one worker process and with one per core (``INGEST_WORKERS``); the raw producer
is one Python thread (plus librdkafka's own threads), as a producer application would be. The
load generator is a lean keep-alive HTTP/1.1 client (see :func:`ingest_run`), so that it takes
as little as it can of the CPU the service and the broker share with it.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Producer
from schemas.topics import FEATURES as FEATURES_TOPIC
from schemas.topics import TopicSpec, topic
from tributary_kit.admin import ensure_topics

from deploy.localstack import Broker, ServiceProcess, free_port

FEATURES = [f"f{i}" for i in range(8)]
SPEC = {
    "name": "bench",
    "features": [{"name": f, "type": "numeric", "min": -1e9, "max": 1e9} for f in FEATURES]
    + [{"name": "segment", "type": "categorical", "categories": ["a", "b", "c", "d"]}],
    "label": {"type": "binary"},
}
RAW_TOPIC = "bench.raw-baseline"


def make_events(n: int) -> list[dict[str, Any]]:
    now = datetime.now(UTC).isoformat()
    return [
        {
            "event_id": str(uuid.uuid4()),
            "dataset": "bench",
            "entity_id": f"c-{i % 10_000}",
            "event_time": now,
            "features": {**{f: (i * 7 + j) % 1000 / 10 for j, f in enumerate(FEATURES)}, "segment": "abcd"[i % 4]},
            "label": i % 2,
        }
        for i in range(n)
    ]


def raw_producer_run(bootstrap: str, events: list[dict[str, Any]]) -> float:
    """Events/s of a raw producer sending each event's JSON and waiting for every delivery report."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                         "linger.ms": 5, "compression.type": "lz4", "queue.buffering.max.messages": 1_000_000})
    payloads = [(json.dumps(e).encode(), e["entity_id"].encode()) for e in events]
    delivered = 0

    def on_delivery(err: Any, msg: Any) -> None:
        nonlocal delivered
        if err is None:
            delivered += 1

    started = time.perf_counter()
    for value, key in payloads:
        while True:
            try:
                producer.produce(RAW_TOPIC, value, key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush(60)
    elapsed = time.perf_counter() - started
    assert delivered == len(events), f"raw producer: {delivered} of {len(events)} delivered"
    return len(events) / elapsed


async def ingest_run(url: str, bodies: list[bytes], batch: int, concurrency: int) -> tuple[float, list[float]]:
    """Events/s through POST /v1/events/batch, and every batch's latency in seconds.

    The client is a minimal HTTP/1.1 keep-alive client on asyncio streams: httpx spends about 3 µs
    of CPU per event on 1000-event bodies (on the same 2 cores as the service and the broker),
    this one about 0.3 µs, and a producer application would not run on the broker's machine.
    """
    latencies: list[float] = []
    host, port = url.removeprefix("http://").split(":")
    pending = list(reversed(bodies))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while pending:
                body = pending.pop()
                t0 = time.perf_counter()
                writer.write(b"POST /v1/events/batch HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n" % (host.encode(), len(body)))
                writer.write(body)
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                answer = await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
                if head[9:12] != b"200":
                    status, text = head[9:12].decode(), answer[:300].decode(errors="replace")
                    raise RuntimeError(f"ingest answered {status}: {text}")
        finally:
            writer.close()
            await writer.wait_closed()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return len(bodies) * batch / elapsed, latencies


def _measure(broker: Broker, tmp: str, workers: int, n: int, batch: int, concurrencies: tuple[int, ...],
             rounds: int) -> dict[int, tuple[list[float], list[float], list[float]]]:
    """Per client concurrency: raw-producer rates, ingest rates and batch latencies, alternating rounds."""
    port = free_port()
    ingest = ServiceProcess(
        "ingest", "ingest",
        {"INGEST_KAFKA_BOOTSTRAP": broker.bootstrap, "INGEST_PORT": str(port), "INGEST_CONSUME_RAW": "false",
         "INGEST_LOG_LEVEL": "WARNING", "INGEST_WORKERS": str(workers)},
        ready_url=f"http://127.0.0.1:{port}/readyz", log_path=Path(tmp) / f"ingest-{workers}.log",
    )
    out: dict[int, tuple[list[float], list[float], list[float]]] = {c: ([], [], []) for c in concurrencies}
    try:
        ingest.start()
        url = f"http://127.0.0.1:{port}"
        response = httpx.post(f"{url}/v1/datasets", json=SPEC, timeout=30)
        if response.status_code not in (200, 201):  # 200: already registered by an earlier round
            raise RuntimeError(f"registering the bench dataset: {response.status_code} {response.text[:300]}")
        time.sleep(1)  # every worker learns the spec from the spec topic

        # Warm both paths up, then alternate measured rounds (raw, then ingest at each concurrency).
        warm = make_events(5_000)
        raw_producer_run(broker.bootstrap, warm)
        asyncio.run(ingest_run(url, [json.dumps(warm[i:i + batch]).encode()
                                     for i in range(0, len(warm), batch)], batch, max(concurrencies)))
        for _ in range(rounds):
            for concurrency in concurrencies:
                raw_rates, ingest_rates, latencies = out[concurrency]
                events = make_events(n)
                raw_rates.append(raw_producer_run(broker.bootstrap, events))
                events = make_events(n)
                bodies = [json.dumps(events[i:i + batch]).encode() for i in range(0, n, batch)]
                rate, lat = asyncio.run(ingest_run(url, bodies, batch, concurrency))
                ingest_rates.append(rate)
                latencies += lat
    finally:
        ingest.stop()
    return out


def run(*, quick: bool = False) -> list[tuple[str, str, str, str, str]]:
    """Ingest with one worker and one per core, each at 4 batches in flight and at 16 (enough to keep
    every worker busy: with 4, two workers each wait on the broker's acknowledgements half the time)."""
    n, batch, rounds = (20_000, 500, 1) if quick else (100_000, 1000, 3)
    concurrencies = (4, 16)
    cores = os.cpu_count() or 1
    worker_counts = sorted({1, cores})
    rows: list[tuple[str, str, str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        broker = Broker(Path(tmp) / "kafka")
        broker.start()
        try:
            # The same partitioning as the validated feature topic.
            ensure_topics(broker.bootstrap, [TopicSpec(name=RAW_TOPIC, event_type=None, key="entity id",
                                                       partitions=topic(FEATURES_TOPIC).partitions)])
            for workers in worker_counts:
                measured = _measure(broker, tmp, workers, n, batch, concurrencies, rounds)
                for concurrency, (raw_rates, ingest_rates, latencies) in measured.items():
                    raw_rate, ingest_rate = statistics.median(raw_rates), statistics.median(ingest_rates)
                    ratios = sorted(i / r for i, r in zip(ingest_rates, raw_rates, strict=True))
                    latencies.sort()
                    p50 = latencies[len(latencies) // 2] * 1000
                    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
                    ratio = ingest_rate / raw_rate
                    label = f"{workers} worker process{'es' if workers > 1 else ''}, {concurrency} in flight"
                    print(f"ingest ({label}): {ingest_rate:,.0f} events/s (batches of {batch}), batch latency "
                          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms")
                    print(f"raw producer: {raw_rate:,.0f} events/s; ratio of medians {ratio:.2f}, per round "
                          f"{', '.join(f'{r:.2f}' for r in ratios)} (target >= 0.5)")
                    rows += [
                        (f"ingest batch endpoint, events/s ({label}, {cores} cores)", f"{ingest_rate:,.0f}",
                         f"{raw_rate:,.0f} (raw producer, 1 thread)", f"{ratio:.2f}", ">= 0.5"),
                        (f"ingest batch latency ({batch} events, {label}), p50 / p99",
                         f"{p50:.1f} / {p99:.1f} ms", "-", "-", "-"),
                    ]
        finally:
            broker.stop()
    return rows
