"""The whole local stack in the foreground: ``deploy/tributary up`` (or ``python -m deploy.stack``).

Starts the Kafka broker (data kept in ``.tributary/kafka`` between runs), then every service,
then a data generator that registers a demo dataset and streams events into ingest, printing
progress as it goes. Ctrl-C (or ``--duration``) stops everything in reverse order.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deploy.localstack import REPO, Broker, ServiceProcess, StartError, free_port
from deploy.triton import TritonServer, python_backend_repository

STATE = Path(os.environ.get("TRIBUTARY_STATE", REPO / ".tributary"))

DEMO_SPEC: dict[str, Any] = {
    "name": "credit",
    "description": "Consumer credit applications; the label is a default within 12 months.",
    "entity": "applicant",
    "features": [
        {"name": "age", "type": "numeric", "min": 18, "max": 100},
        {"name": "income", "type": "numeric", "min": 0},
        {"name": "debt_ratio", "type": "numeric", "min": 0, "max": 10},
        {"name": "credit_lines", "type": "numeric", "min": 0, "max": 100},
        {"name": "late_payments", "type": "numeric", "min": 0, "max": 50},
        {"name": "home", "type": "categorical", "categories": ["rent", "own", "mortgage"]},
        {"name": "region", "type": "categorical", "categories": ["north", "south", "east", "west"]},
        {"name": "employment_years", "type": "numeric", "min": 0, "max": 60, "nullable": True},
    ],
    "label": {"type": "binary"},
}


def say(message: str) -> None:
    """One timestamped line of the run's timeline."""
    print(f"{datetime.now():%H:%M:%S}  {message}", flush=True)


def post(url: str, body: Any, *, method: str = "POST") -> tuple[int, dict[str, Any]]:
    """POST (or PUT) JSON; the status and the decoded answer, errors included."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method=method,
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def applicant(rng: random.Random, *, invalid: bool = False) -> dict[str, Any]:
    """One synthetic credit application (occasionally a broken one, to show dead-lettering)."""
    income = max(0.0, rng.gauss(52_000, 18_000))
    debt_ratio = max(0.0, min(10.0, rng.gauss(0.35, 0.15)))
    late = rng.choices([0, 1, 2, 3, 5], weights=[70, 15, 8, 5, 2])[0]
    features: dict[str, Any] = {
        "age": rng.randint(18, 80), "income": round(income, 2), "debt_ratio": round(debt_ratio, 3),
        "credit_lines": rng.randint(0, 20), "late_payments": late, "home": rng.choice(["rent", "own", "mortgage"]),
        "region": rng.choice(["north", "south", "east", "west"]),
        "employment_years": None if rng.random() < 0.05 else rng.randint(0, 40),
    }
    if invalid:
        features["age"] = "unknown"
    score = -3 + 2.5 * debt_ratio + 0.6 * late - income / 100_000
    return {
        "event_id": str(uuid.uuid4()), "dataset": "credit", "entity_id": f"applicant-{rng.randint(1, 5000)}",
        "event_time": datetime.now(UTC).isoformat(), "features": features,
        "label": int(rng.random() < 1 / (1 + pow(2.718281828, -score))),
    }


class Generator:
    """Streams batches of demo events into ingest until stopped; counts what happened."""

    def __init__(self, ingest_url: str, rate: float, seed: int = 7) -> None:
        self.url = ingest_url
        self.rate = rate
        self.rng = random.Random(seed)
        self.accepted = 0
        self.rejected = 0
        self.failed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        """Post one batch a second until stopped."""
        batch = max(1, int(self.rate))
        while not self.stop.is_set():
            started = time.monotonic()
            events = [applicant(self.rng, invalid=self.rng.random() < 0.01) for _ in range(batch)]
            try:
                status, answer = post(f"{self.url}/v1/events/batch", events)
            except (urllib.error.URLError, OSError):
                self.failed += batch
            else:
                if status in (200, 422):
                    self.accepted += int(answer.get("accepted", 0))
                    self.rejected += int(answer.get("rejected", 0))
                else:
                    self.failed += batch
            self.stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))


class RedisProcess:
    """redis-server for the stack (append-only file in ``data_dir``, kept between runs)."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://`` URL of the server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start and wait until it answers PING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
             "--appendonly", "yes", "--save", "", "--logfile", str(self.data_dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        ping = ["redis-cli", "-p", str(self.port), "ping"]
        while subprocess.run(ping, capture_output=True).stdout.strip() != b"PONG":
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise StartError(f"redis-server did not start (log: {self.data_dir / 'redis.log'})")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)


def main(argv: list[str] | None = None) -> int:
    """Start the stack, stream the demo, stop everything on Ctrl-C or after ``--duration``."""
    parser = argparse.ArgumentParser(description="Run the Tributary stack locally in the foreground.")
    parser.add_argument("--duration", type=float, default=0, help="stop after this many seconds (0: until Ctrl-C)")
    parser.add_argument("--rate", type=float, default=50, help="demo events per second (0: no generator)")
    parser.add_argument("--kafka-port", type=int, default=int(os.environ.get("KAFKA_PORT", 9092)))
    parser.add_argument("--ingest-port", type=int, default=int(os.environ.get("INGEST_PORT", 8001)))
    parser.add_argument("--inference-port", type=int, default=int(os.environ.get("INFERENCE_PORT", 8003)))
    parser.add_argument("--model-repository", type=Path, default=STATE / "models",
                        help="the registry's Triton model repository the local Triton and the gateway serve")
    args = parser.parse_args(argv)

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    logs = STATE / "logs"
    broker = Broker(STATE / "kafka", port=args.kafka_port,
                    controller_port=int(os.environ.get("KAFKA_CONTROLLER_PORT", args.kafka_port + 1)))
    ingest_url = f"http://127.0.0.1:{args.ingest_port}"
    redis = RedisProcess(STATE / "redis", int(os.environ.get("REDIS_PORT", 0)) or free_port())
    # Local CPU Triton serving the Python-backend twin of the registry's repository (deploy/triton.py).
    args.model_repository.mkdir(parents=True, exist_ok=True)
    triton = TritonServer(STATE / "triton" / "models", STATE / "triton", http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port())
    inference_url = f"http://127.0.0.1:{args.inference_port}"
    services = [
        ServiceProcess("ingest", "ingest", {"INGEST_KAFKA_BOOTSTRAP": broker.bootstrap,
                                            "INGEST_PORT": str(args.ingest_port)},
                       ready_url=f"{ingest_url}/readyz", log_path=logs / "ingest.log"),
        ServiceProcess("inference", "inference", {
            "INFERENCE_KAFKA_BOOTSTRAP": broker.bootstrap, "INFERENCE_PORT": str(args.inference_port),
            "INFERENCE_GRPC_PORT": str(args.inference_port + 1), "INFERENCE_REDIS_URL": redis.url,
            "INFERENCE_TRITON_GRPC_URL": triton.grpc_url, "INFERENCE_FALLBACK": "onnxruntime",
            "INFERENCE_MODEL_REPOSITORY": str(args.model_repository)},
            ready_url=f"{inference_url}/readyz", log_path=logs / "inference.log"),
    ]
    started: list[ServiceProcess] = []
    generator: Generator | None = None
    try:
        say(f"starting Kafka on {broker.bootstrap} (data in {broker.data_dir})")
        broker.start()
        say(f"starting Redis on {redis.url}")
        redis.start()
        models = python_backend_repository(args.model_repository, triton.repository)
        say(f"starting Triton (CPU) on {triton.grpc_url}, models: {', '.join(models) or 'none yet'}")
        triton.start()
        for model in models:
            triton.load(model)
        for service in services:
            say(f"starting {service.name} (log: {service.log_path})")
            service.start()
            started.append(service)
        say(f"ingest ready: {ingest_url}  (API docs {ingest_url}/docs, metrics {ingest_url}/metrics)")
        say(f"inference gateway ready: {inference_url} (gRPC 127.0.0.1:{args.inference_port + 1}, "
            f"rollouts {inference_url}/v1/rollout)")
        status, answer = post(f"{ingest_url}/v1/datasets/credit", DEMO_SPEC, method="PUT")
        if status not in (200, 201):
            raise StartError(f"could not register the demo dataset: {status} {answer}")
        how = "registered" if status == 201 else "already registered, kept from the last run"
        say(f"dataset 'credit' {how} (revision {answer['revision']})")
        if args.rate > 0:
            generator = Generator(ingest_url, args.rate)
            threading.Thread(target=generator.run, name="generator", daemon=True).start()
            say(f"streaming ~{args.rate:.0f} demo events/s into ingest; Ctrl-C stops everything")
        deadline = time.monotonic() + args.duration if args.duration else None
        last = time.monotonic()
        while not stopping.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            stopping.wait(0.5)
            for service in started:
                if service.process is not None and service.process.poll() is not None:
                    raise StartError(f"{service.name} exited unexpectedly:\n{service.tail()}")
            if generator is not None and time.monotonic() - last >= 5:
                last = time.monotonic()
                say(f"events accepted {generator.accepted}, dead-lettered {generator.rejected}, "
                    f"failed {generator.failed}")
    except KeyboardInterrupt:
        pass
    except StartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        say("stopping")
        if generator is not None:
            generator.stop.set()
        for service in reversed(started):
            service.stop()
        triton.stop()
        redis.stop()
        try:
            broker.stop()
        except StartError as exc:
            print(f"error: {exc}", file=sys.stderr)
        say("stopped")
    if generator is not None:
        say(f"total: events accepted {generator.accepted}, dead-lettered {generator.rejected}, "
            f"failed {generator.failed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
