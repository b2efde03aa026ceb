"""The closed loop on real processes: every service as ``python -m <service>`` on the session's Kafka,
Redis and Triton, a real Prometheus scraping them, and an OTLP/HTTP receiver collecting their spans.

``closed_loop`` runs one drift -> retrain -> new champion sequence once per session:

1. a dataset spec and 200 labelled events through ingest; a manual command trains v1, which the
   test makes champion through the registry (drift now tests against v1's reference);
2. shifted events through ingest; the event that closes the next window is sent with a W3C
   ``traceparent`` of the test's own trace, so the drift report and retrain command it causes,
   the trainer's run, the registry's registration and alias move, and the gateway's rollout
   consumer all continue that trace;
3. the trainer registers v2 as canary; predictions go through the gateway (champion and canary
   routes, canary compared with the champion); the test promotes v2 to champion through the
   registry, which ends the drift episode (drift-to-recovery time).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from schemas.topics import CATALOGUE, RETRAIN_COMMANDS
from tributary_kit.admin import ensure_topics

from deploy.localstack import ServiceProcess, StartError, free_port
from tests.fixtures.prometheus import PrometheusServer
from tests.fixtures.triton import TritonServer, add_model

SERVICES = ("registry", "ingest", "drift", "trainer", "inference")
WINDOW = 60


@dataclass(frozen=True)
class Span:
    """One exported span, as the receiver decoded it."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    links: tuple[str, ...]


class OtlpReceiver:
    """An OTLP/HTTP traces endpoint on loopback that keeps every span it is sent (protobuf bodies)."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                got = []
                for resource_spans in request.resource_spans:
                    attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                    for scope in resource_spans.scope_spans:
                        for s in scope.spans:
                            got.append(Span(attrs.get("service.name", "?"), s.name, s.trace_id.hex(), s.span_id.hex(),
                                            s.parent_span_id.hex(), tuple(link.trace_id.hex() for link in s.links)))
                with receiver.lock:
                    receiver.spans += got
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def of_trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id or trace_id in s.links]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class ClosedLoop:
    """What the sequence left behind for the tests to check."""

    ports: dict[str, int]
    prometheus: PrometheusServer
    otlp: OtlpReceiver
    trace_id: str
    model: str
    dataset: str
    processes: dict[str, ServiceProcess] = field(default_factory=dict)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = 90.0,
             logs: dict[str, ServiceProcess] | None = None) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {n}\n{p.tail(15)}" for n, p in (logs or {}).items())
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}\n{tails}", pytrace=False)
        time.sleep(0.2)


def _json(url: str) -> Any:
    try:
        response = httpx.get(url, timeout=10)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def _skip_old_commands(bootstrap: str, group: str) -> None:
    """Start ``group`` at the end of the command topic: commands of earlier tests are not this loop's."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(RETRAIN_COMMANDS, timeout=10).topics[RETRAIN_COMMANDS].partitions
        ends = [TopicPartition(RETRAIN_COMMANDS, p,
                               consumer.get_watermark_offsets(TopicPartition(RETRAIN_COMMANDS, p), timeout=10)[1])
                for p in partitions]
        if not any(tp.offset > 0 for tp in ends):
            return
        deadline = time.monotonic() + 30
        while True:
            try:
                consumer.commit(offsets=ends, asynchronous=False)
                return
            except KafkaException:  # the group coordinator is still being elected on a fresh broker
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        consumer.close()


def _rows(rng: np.random.Generator, n: int, dataset: str, start: datetime, shift: float, tag: str
          ) -> list[dict[str, Any]]:
    x = rng.normal(size=(n, 2)) + np.array([shift, 0.0])
    return [{"event_id": f"{tag}-{i}", "dataset": dataset, "entity_id": f"e-{tag}-{i}",
             "event_time": (start + timedelta(seconds=i)).isoformat(),
             "features": {"x1": float(x[i, 0]), "x2": float(x[i, 1])}, "label": int(x[i, 0] - shift + x[i, 1] > 0)}
            for i in range(n)]


def _post(url: str, body: Any, *, headers: dict[str, str] | None = None, expect: tuple[int, ...] = (200, 201, 202)
          ) -> Any:
    response = httpx.post(url, json=body, headers=headers or {}, timeout=60)
    assert response.status_code in expect, f"POST {url}: {response.status_code} {response.text[:500]}"
    return response.json()


@pytest.fixture(scope="package")
def closed_loop(kafka_bootstrap: str, redis_url: str, triton: TritonServer,
                prometheus_factory: Callable[..., PrometheusServer],
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClosedLoop]:
    root = tmp_path_factory.mktemp("closed-loop")
    unique = uuid.uuid4().hex[:8]
    model, dataset = f"loop{unique}", f"loop{unique}"
    ensure_topics(kafka_bootstrap, CATALOGUE.values(), timeout_s=60)
    ports = {name: free_port() for name in SERVICES}
    otlp = OtlpReceiver()
    prometheus = prometheus_factory({name: [f"127.0.0.1:{port}"] for name, port in ports.items()})
    common = {"OTEL_BSP_SCHEDULE_DELAY": "200"}
    registry_data = root / "registry"
    registry_data.mkdir()
    registry_env = {"REGISTRY_DATA_DIR": str(registry_data), "REGISTRY_KAFKA_BOOTSTRAP": kafka_bootstrap,
                    "REGISTRY_PORT": str(ports["registry"]), "REGISTRY_LOG_LEVEL": "WARNING",
                    "REGISTRY_OTLP_ENDPOINT": otlp.endpoint, "REGISTRY_OUTBOX_POLL_INTERVAL_S": "0.2"}
    made = subprocess.run([sys.executable, "-m", "registry.cli", "tokens", "create", "--name", "loop",
                           "--role", "trainer", "--role", "operator"], env={**os.environ, **registry_env},
                          capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.fail(f"could not create a registry token: {made.stderr}", pytrace=False)
    token = made.stdout.strip().splitlines()[-1]
    registry_url = f"http://127.0.0.1:{ports['registry']}"
    trainer_group = f"trainer-loop-{unique}"
    _skip_old_commands(kafka_bootstrap, trainer_group)
    envs: dict[str, dict[str, str]] = {
        "registry": registry_env,
        "ingest": {"INGEST_KAFKA_BOOTSTRAP": kafka_bootstrap, "INGEST_PORT": str(ports["ingest"]),
                   "INGEST_RAW_GROUP_ID": f"ingest-raw-{unique}", "INGEST_OTLP_ENDPOINT": otlp.endpoint,
                   "INGEST_LOG_LEVEL": "WARNING"},
        "drift": {"DRIFT_KAFKA_BOOTSTRAP": kafka_bootstrap, "DRIFT_PORT": str(ports["drift"]),
                  "DRIFT_APP_ID": f"drift-loop-{unique}", "DRIFT_STATE_DIR": str(root / "drift"),
                  "DRIFT_REGISTRY_URL": registry_url, "DRIFT_WINDOW_SIZE": str(WINDOW), "DRIFT_MIN_SAMPLES": "20",
                  "DRIFT_CONSECUTIVE_WINDOWS": "1", "DRIFT_CLEAR_WINDOWS": "1", "DRIFT_COOLDOWN_S": "0",
                  "DRIFT_RECOVERY_OBJECTIVE_S": "600",
                  "DRIFT_PSI_THRESHOLD": "2.0", "DRIFT_PSI_BINS": "4", "DRIFT_OTLP_ENDPOINT": otlp.endpoint,
                  "DRIFT_LOG_LEVEL": "WARNING"},
        "trainer": {"TRAINER_KAFKA_BOOTSTRAP": kafka_bootstrap, "TRAINER_PORT": str(ports["trainer"]),
                    "TRAINER_GROUP_ID": trainer_group, "TRAINER_REGISTRY_URL": registry_url,
                    "TRAINER_REGISTRY_TOKEN": token, "TRAINER_HIDDEN_LAYERS": "[8]", "TRAINER_MAX_EPOCHS": "5",
                    "TRAINER_MIN_ROWS": "50", "TRAINER_GATE_MARGIN": "1.0", "TRAINER_GATE_MIN_SLICE_ROWS": "100000",
                    "TRAINER_RETRY_BACKOFF_S": "0.5", "TRAINER_OTLP_ENDPOINT": otlp.endpoint,
                    "TRAINER_LOG_LEVEL": "WARNING"},
        "inference": {"INFERENCE_KAFKA_BOOTSTRAP": kafka_bootstrap, "INFERENCE_PORT": str(ports["inference"]),
                      "INFERENCE_GRPC_PORT": str(free_port()), "INFERENCE_TRITON_GRPC_URL": triton.grpc_url,
                      "INFERENCE_TRITON_HTTP_URL": triton.http_url,
                      "INFERENCE_REDIS_URL": redis_url, "INFERENCE_REDIS_PREFIX": f"loop-{unique}:",
                      "INFERENCE_GROUP_SUFFIX": f"-{unique}", "INFERENCE_CANARY_ANALYSIS": "false",
                      "INFERENCE_ROLLOUT_REFRESH_S": "0.1", "INFERENCE_OTLP_ENDPOINT": otlp.endpoint,
                      "INFERENCE_REGISTRY_URL": registry_url,
                      "INFERENCE_LOG_LEVEL": "WARNING"},
    }
    processes: dict[str, ServiceProcess] = {}
    loop = ClosedLoop(ports, prometheus, otlp, trace_id=uuid.uuid4().hex, model=model, dataset=dataset,
                      processes=processes)
    try:
        for name in SERVICES:
            ready = "/v2/health/ready" if name == "inference" else "/readyz"
            process = ServiceProcess(name, name, {**common, **envs[name]},
                                     ready_url=f"http://127.0.0.1:{ports[name]}{ready}", log_path=root / f"{name}.log")
            processes[name] = process
            try:
                process.start(timeout_s=120)
            except StartError as exc:
                pytest.fail(str(exc), pytrace=False)
        _run_sequence(loop, token, registry_data, triton)
        yield loop
    finally:
        for process in reversed(list(processes.values())):
            process.stop()
        otlp.stop()


def _run_sequence(loop: ClosedLoop, token: str, registry_data: Path, triton: TritonServer) -> None:
    rng = np.random.default_rng(7)
    ingest, registry, drift = loop.url("ingest"), loop.url("registry"), loop.url("drift")
    operator = {"Authorization": f"Bearer {token}"}
    procs = loop.processes
    model, dataset = loop.model, loop.dataset
    t0 = datetime.now(UTC) - timedelta(minutes=10)

    features = [{"name": f, "type": "numeric", "min": -50, "max": 50} for f in ("x1", "x2")]
    _post(f"{ingest}/v1/datasets", {"name": dataset, "label": {"type": "binary"}, "features": features})
    _post(f"{ingest}/v1/events/batch", _rows(rng, 200, dataset, t0, 0.0, "base"))
    _post(f"{ingest}/v1/events", {"event_id": "bad-1", "dataset": dataset, "entity_id": "e", "features": {}},
          expect=(422,))                                    # one refusal: ingest's error metrics get a sample

    # v1: a manual command, then champion through the registry.
    wait_for(lambda: (_json(f"{drift}/v1/drift/status") or {}).get("datasets"), "drift to see the dataset",
             logs=procs)
    _post(f"{loop.url('trainer')}/v1/commands", {"model_name": model, "dataset": dataset})
    wait_for(lambda: _json(f"{registry}/v1/models/{model}/aliases/canary"), "v1 to be trained and registered",
             timeout_s=180, logs=procs)
    for alias, method in (("champion", "PUT"), ("canary", "DELETE")):
        body = {"version": 1, "reason": "closed loop"} if method == "PUT" else None
        response = httpx.request(method, f"{registry}/v1/models/{model}/aliases/{alias}", json=body,
                                 headers=operator, timeout=60, params=None if body else {"reason": "closed loop"})
        assert response.status_code in (200, 204), response.text

    def reference_is_v1() -> bool:
        status = _json(f"{drift}/v1/drift/status") or {"datasets": []}
        mine = [d for d in status["datasets"] if d["dataset"] == dataset]
        return bool(mine) and mine[0]["model_version"] == 1 and mine[0]["events"] >= 200

    wait_for(reference_is_v1, "drift to test against v1's reference", logs=procs)


    # The policy must be armed (a clean window after any earlier command) before the drift starts.
    def state() -> dict[str, Any]:
        status = _json(f"{drift}/v1/drift/status") or {"datasets": []}
        return next(d for d in status["datasets"] if d["dataset"] == dataset)

    def send_until_counted(rows: list[dict[str, Any]], headers: dict[str, str] | None = None) -> None:
        target = state()["events"] + len(rows)
        if len(rows) == 1:
            _post(f"{ingest}/v1/events", rows[0], headers=headers)
        else:
            _post(f"{ingest}/v1/events/batch", rows)
        wait_for(lambda: state()["events"] >= target, "drift to count the events", logs=procs)

    # Event times ahead of the records' Kafka timestamps: the retrain window ends at the report's
    # last event time and the trainer resolves it on Kafka timestamps.
    later = datetime.now(UTC) + timedelta(minutes=30)
    for attempt in range(4):
        current = state()
        if current["policy"]["armed"] and attempt > 0:
            break
        fill = WINDOW - current["window"]["in_window"]           # close the current window with clean events
        send_until_counted(_rows(rng, fill, dataset, later, 0.0, f"clean{attempt}"))
    assert state()["policy"]["armed"], f"{state()['policy']} {state()['last_report']}"

    # Shifted data: one full window whose closing event carries the test's trace.
    shifted = _rows(rng, WINDOW, dataset, later + timedelta(minutes=5), 3.0, "shift")
    send_until_counted(shifted[:-1])
    traceparent = f"00-{loop.trace_id}-{uuid.uuid4().hex[:16]}-01"
    send_until_counted(shifted[-1:], headers={"traceparent": traceparent})

    # v2: drift's retrain command -> trainer -> registry canary.
    wait_for(lambda: (_json(f"{registry}/v1/models/{model}/aliases/canary") or {}).get("version") == 2,
             "the drift-triggered v2 to become canary", timeout_s=180, logs=procs)
    add_model(triton, registry_data / "triton", model, versions=(1, 2))
    inference = loop.url("inference")

    def serving_both() -> bool:
        table = _json(f"{inference}/v1/rollout/{model}") or {}
        return table.get("champion") == 1 and table.get("canary") == 2

    wait_for(serving_both, "the gateway to route v1 and v2", logs=procs)
    for i in range(60):
        row = _rows(rng, 1, dataset, t0, 3.0, f"p{i}")[0]
        answer = httpx.post(f"{inference}/v1/predict", json={"model": model, "entity_id": f"user-{i}",
                                                            "features": row["features"]}, timeout=30)
        assert answer.status_code == 200, answer.text

    # v2 champion: the drift episode ends.
    response = httpx.put(f"{registry}/v1/models/{model}/aliases/champion", json={"version": 2, "reason": "closed loop"},
                         headers=operator, timeout=60)
    assert response.status_code == 200, response.text
    wait_for(lambda: "drift_recovery_seconds{" in httpx.get(f"{drift}/metrics", timeout=10).text,
             "drift to measure the recovery", logs=procs)
