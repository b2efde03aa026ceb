"""Bounded load: ingest and the inference gateway driven at the same time, at a fixed offered rate.

Started here, each as its own process on free loopback ports with its data in a temporary
folder: a Kafka broker, Redis, the local CPU Triton (``deploy/triton.py``), the model registry,
ingest and the gateway. One small ONNX model is registered through the registry and made champion
there; Triton serves the registry's repository (:class:`deploy.triton.RepositorySync`) and the
gateway learns the route from the registry's rollout event, as in the deployed stack.

Then, for the whole run, an open-loop client offers a fixed rate to both services at once: batches
of feature events to ``POST /v1/events/batch`` and single-row KServe v2 requests to
``POST /v2/models/{model}/infer``. Requests leave on a fixed schedule whatever the answers do (a
slow answer does not slow the offered rate); at most ``max_outstanding`` requests per service may
be waiting, and a request the client could not send for that reason counts as an error, so an
overloaded stack cannot hide behind a client that slowed down.

Reported: per service the achieved rate, p50/p99 latency, errors (non-2xx answers, transport
exceptions, requests not sent), CPU used; the RSS of every process (sampled once a second from
``/proc/<pid>/status``, a process together with its children, so Triton includes its Python-backend
stubs), as the maximum over the first and over the last minute of the run (a third of the run when
it is shorter than three minutes). Pass criteria, checked after the table is printed, failing the
run loudly (:class:`bench.BenchmarkFailed`, exit status 1): zero errors; every event ingest
acknowledged is read back from the feature topic; no process's RSS grew by more than its bound in
:data:`RSS_GROWTH_BOUND_MIB`.

Everything shares one machine (on the reference box: 2 cores), so the client competes with the
services for CPU; the latencies are what this machine does at this load, not a capacity claim.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from onnx import TensorProto, helper, numpy_helper
from schemas.topics import FEATURES as FEATURES_TOPIC

from bench import BenchmarkFailed
from deploy.localstack import Broker, ServiceProcess, StartError, free_port
from deploy.stack import RedisProcess
from deploy.triton import RepositorySync, TritonServer

INPUTS = 16
"""Width of the served model's single input ``x``."""

EVENT_FEATURES = [f"f{i}" for i in range(8)]

RSS_GROWTH_BOUND_MIB: dict[str, float] = {
    "ingest": 50.0,
    "inference": 50.0,
    "registry": 50.0,
    "triton": 100.0,
    "redis": 50.0,
    "kafka": 512.0,
}
"""Largest tolerated growth of each process's RSS from the first window's maximum to the last's, MiB.

50 MiB for our services and Redis (the reliability plan's bound for the gateway); 100 MiB for
Triton with its Python-backend stubs; for the broker, its fixed JVM heap (``-Xms``=``-Xmx``=512m):
the JVM's RSS rises while the collector first touches heap pages, and that heap is its bound.
"""


@dataclass(frozen=True)
class Offered:
    """The fixed load offered to each service for the whole run."""

    ingest_batches_per_s: float = 10.0
    """Batch requests per second to ingest."""

    batch_events: int = 20
    """Feature events in each batch (events/s = batches/s x this)."""

    infer_per_s: float = 100.0
    """Single-row inference requests per second to the gateway."""

    max_outstanding: int = 256
    """Requests per service that may wait for an answer; beyond that a request is not sent (an error)."""

    timeout_s: float = 30.0
    """Client timeout of one request; a timed-out request is an error."""


@dataclass
class Stream:
    """What one service answered during the run."""

    name: str
    sent: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    max_start_lag_s: float = 0.0
    """Longest delay between a request's scheduled time and its departure (the client's own lag)."""

    @property
    def error_count(self) -> int:
        """Non-2xx answers, exceptions and requests not sent."""
        return sum(self.errors.values())

    def percentile_ms(self, q: float) -> float:
        """The ``q`` quantile (0..1) of the latencies of answered requests, in milliseconds."""
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


@dataclass
class LoadResult:
    """Both streams of one run, and the ids of every event ingest acknowledged."""

    ingest: Stream
    inference: Stream
    acked_event_ids: list[str]
    duration_s: float
    client_cpu_s: float = 0.0
    """CPU the load client's process used during the run (it shares the machine with the services)."""


def model_onnx(seed: int = 1) -> bytes:
    """A small MLP ``x[batch, 16] -> y[batch, 1]`` (sigmoid output) as ONNX bytes."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(size=(INPUTS, 32)).astype(np.float32), "W1")
    w2 = numpy_helper.from_array(rng.normal(size=(32, 1)).astype(np.float32), "W2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "W2"], ["z"]), helper.make_node("Sigmoid", ["z"], ["y"])],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", INPUTS])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench-load")
    model.ir_version = 9
    return bytes(model.SerializeToString())


def dataset_spec(name: str) -> dict[str, Any]:
    """The load's dataset: eight numeric features and a binary label."""
    return {"name": name, "label": {"type": "binary"},
            "features": [{"name": f, "type": "numeric", "min": -1e6, "max": 1e6} for f in EVENT_FEATURES]}


def batch_events(dataset: str, first: int, n: int) -> list[dict[str, Any]]:
    """Events ``first .. first+n-1`` of ``dataset``: unique ids, 200 entities, the current time."""
    now = datetime.now(UTC).isoformat()
    return [{"event_id": f"{dataset}-{i}", "dataset": dataset, "entity_id": f"e{i % 200}", "event_time": now,
             "features": {f: float((i * 7 + j) % 1000) / 10 for j, f in enumerate(EVENT_FEATURES)},
             "label": i % 2} for i in range(first, first + n)]


def infer_body(i: int) -> dict[str, Any]:
    """A one-row KServe v2 request (``i`` varies the row)."""
    row = np.linspace(-1, 1, INPUTS) * ((i % 10) + 1) / 10
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, INPUTS], "data": row.tolist()}]}


# -- processes and their memory ------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """``pid`` and every descendant living now (from ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (``VmRSS``); 0 when it has exited."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far, in seconds; 0 when it has exited."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class MemorySampler:
    """Samples, once a second in a thread, the RSS of each named process with its children.

    ``samples[name]`` is a list of ``(seconds since start, MiB)``. CPU seconds are taken at
    :meth:`start` and :meth:`stop` (``cpu_s[name]``).
    """

    def __init__(self, pids: dict[str, int], every_s: float = 1.0) -> None:
        self.pids = pids
        self.every_s = every_s
        self.samples: dict[str, list[tuple[float, float]]] = {name: [] for name in pids}
        self.cpu_s: dict[str, float] = {}
        self._cpu_start: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._t0 = 0.0

    def _tree_cpu(self) -> dict[str, float]:
        return {name: sum(cpu_seconds(p) for p in process_tree(pid)) for name, pid in self.pids.items()}

    def sample(self) -> None:
        """Take one sample of every process now."""
        now = time.monotonic() - self._t0
        for name, pid in self.pids.items():
            self.samples[name].append((now, sum(rss_mib(p) for p in process_tree(pid))))

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def start(self) -> None:
        """Start sampling (one sample at once)."""
        self._t0 = time.monotonic()
        self._cpu_start = self._tree_cpu()
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        """Take a last sample and stop."""
        self._stop.set()
        self._thread.join(10)
        self.sample()
        end = self._tree_cpu()
        self.cpu_s = {name: end[name] - self._cpu_start.get(name, 0.0) for name in self.pids}

    def timeline(self, buckets: int = 6) -> dict[str, list[float]]:
        """Per process: the max RSS (MiB) in each of ``buckets`` equal slices of the run, in order."""
        out = {}
        for name, rows in self.samples.items():
            end = rows[-1][0] or 1.0
            slices: list[float] = [0.0] * buckets
            for t, mb in rows:
                k = min(buckets - 1, int(t / end * buckets))
                slices[k] = max(slices[k], mb)
            out[name] = slices
        return out

    def growth(self, window_s: float) -> dict[str, tuple[float, float]]:
        """Per process: (max RSS over the first ``window_s``, max RSS over the last ``window_s``), MiB."""
        out = {}
        for name, rows in self.samples.items():
            end = rows[-1][0]
            first = max(mb for t, mb in rows if t <= window_s)
            last = max(mb for t, mb in rows if t >= end - window_s)
            out[name] = (first, last)
        return out


# -- the load ----------------------------------------------------------------------------------------


async def _paced(stream: Stream, *, rate: float, duration_s: float, cap: int,
                 fire: Callable[[int], Coroutine[Any, Any, None]]) -> None:
    """Call ``fire(i)`` at ``rate`` per second for ``duration_s``, each in its own task (open loop)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks: set[asyncio.Task[None]] = set()
    for i in range(round(duration_s * rate)):
        at = start + i / rate
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        stream.max_start_lag_s = max(stream.max_start_lag_s, loop.time() - at)
        if len(tasks) >= cap:
            stream.errors[f"not sent: {cap} requests already waiting"] += 1
            continue
        stream.sent += 1
        task = asyncio.create_task(fire(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)


async def drive(*, ingest_url: str, gateway_url: str, model: str, dataset: str, duration_s: float,
                offered: Offered) -> LoadResult:
    """Offer ``offered`` to ingest and the gateway at the same time for ``duration_s`` seconds."""
    ingest, inference = Stream("ingest"), Stream("inference")
    acked: list[str] = []
    timeout = aiohttp.ClientTimeout(total=offered.timeout_s)
    json_header = {"content-type": "application/json"}

    # aiohttp rather than httpx: on two shared cores the client's own CPU matters, and httpx's
    # async client costs about 15 times more CPU per request (4 ms against 0.25 ms, measured).
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(
            limit=offered.max_outstanding)) as ingest_client, aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(limit=offered.max_outstanding)) as gateway_client:

        async def send_batch(i: int) -> None:
            events = batch_events(dataset, i * offered.batch_events, offered.batch_events)
            body = json.dumps(events).encode()
            t0 = time.perf_counter()
            try:
                async with ingest_client.post(f"{ingest_url}/v1/events/batch", data=body, headers=json_header) as r:
                    text = await r.text()
            except (aiohttp.ClientError, TimeoutError) as exc:
                ingest.errors[f"{type(exc).__name__}: {exc}"[:160]] += 1
                return
            ingest.latencies_s.append(time.perf_counter() - t0)
            if r.status == 200:
                ingest.ok += 1
                acked.extend(e["event_id"] for e in events)
            else:
                ingest.errors[f"HTTP {r.status}: {text[:120]}"] += 1

        async def send_infer(i: int) -> None:
            body = json.dumps(infer_body(i)).encode()
            t0 = time.perf_counter()
            try:
                async with gateway_client.post(f"{gateway_url}/v2/models/{model}/infer", data=body,
                                               headers=json_header) as r:
                    text = await r.text()
            except (aiohttp.ClientError, TimeoutError) as exc:
                inference.errors[f"{type(exc).__name__}: {exc}"[:160]] += 1
                return
            inference.latencies_s.append(time.perf_counter() - t0)
            if r.status == 200 and len(json.loads(text)["outputs"][0]["data"]) == 1:
                inference.ok += 1
            else:
                inference.errors[f"HTTP {r.status}: {text[:120]}"] += 1

        started, cpu_before = time.monotonic(), time.process_time()
        await asyncio.gather(
            _paced(ingest, rate=offered.ingest_batches_per_s, duration_s=duration_s, cap=offered.max_outstanding,
                   fire=send_batch),
            _paced(inference, rate=offered.infer_per_s, duration_s=duration_s, cap=offered.max_outstanding,
                   fire=send_infer),
        )
        elapsed, cpu = time.monotonic() - started, time.process_time() - cpu_before
    return LoadResult(ingest, inference, acked, elapsed, cpu)


def read_back_ids(bootstrap: str, dataset: str, timeout_s: float = 120.0) -> list[str]:
    """Event ids of ``dataset`` in the feature topic, from the beginning to its current end (duplicates kept)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-load-reader-{uuid.uuid4()}",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    try:
        partitions = consumer.list_topics(FEATURES_TOPIC, timeout=10).topics[FEATURES_TOPIC].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(FEATURES_TOPIC, p), timeout=10)[1]
                for p in partitions}
        consumer.assign([TopicPartition(FEATURES_TOPIC, p, OFFSET_BEGINNING) for p in partitions])
        position = {p: -1 for p in partitions}
        ids: list[str] = []
        deadline = time.monotonic() + timeout_s
        while any(position[p] + 1 < ends[p] for p in partitions):
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not read {FEATURES_TOPIC} up to {ends} within {timeout_s}s")
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            partition, offset = msg.partition(), msg.offset()
            assert partition is not None and offset is not None
            position[partition] = offset
            try:
                payload = json.loads(msg.value() or b"null")["payload"]
            except (ValueError, TypeError, KeyError):
                continue  # not an event envelope (another producer's record)
            if isinstance(payload, dict) and payload.get("dataset") == dataset:
                ids.append(str(payload["event_id"]))
        return ids
    finally:
        consumer.close()


# -- the services ------------------------------------------------------------------------------------


class LoadServices:
    """Registry, ingest and the gateway as processes on a given broker, Redis and Triton, with one model
    registered and made champion through the registry, and one dataset registered with ingest.

    Args:
        root: folder for the registry's data and the logs.
        bootstrap: Kafka bootstrap servers.
        redis_url: Redis for the gateway (its keys under a prefix of their own).
        triton: the Triton that serves the registry's repository.
        gateway_env: extra gateway settings (``INFERENCE_*``).

    """

    def __init__(self, root: Path, *, bootstrap: str, redis_url: str, triton: TritonServer,
                 gateway_env: dict[str, str] | None = None) -> None:
        unique = uuid.uuid4().hex[:8]
        self.model, self.dataset = f"load-{unique}", f"load-{unique}"
        self.root, self.bootstrap, self.triton = root, bootstrap, triton
        ports = {name: free_port() for name in ("registry", "ingest", "inference")}
        self.urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        self.registry_data = root / "registry"
        self.registry_env = {"REGISTRY_DATA_DIR": str(self.registry_data), "REGISTRY_KAFKA_BOOTSTRAP": bootstrap,
                             "REGISTRY_PORT": str(ports["registry"]), "REGISTRY_LOG_LEVEL": "WARNING",
                             "REGISTRY_OUTBOX_POLL_INTERVAL_S": "0.2"}
        self.registry = ServiceProcess("registry", "registry", self.registry_env,
                                       ready_url=f"{self.urls['registry']}/readyz", log_path=root / "registry.log")
        self.ingest = ServiceProcess("ingest", "ingest", {
            "INGEST_KAFKA_BOOTSTRAP": bootstrap, "INGEST_PORT": str(ports["ingest"]), "INGEST_CONSUME_RAW": "false",
            "INGEST_LOG_LEVEL": "WARNING"}, ready_url=f"{self.urls['ingest']}/readyz", log_path=root / "ingest.log")
        self.gateway = ServiceProcess("inference", "inference", {
            "INFERENCE_KAFKA_BOOTSTRAP": bootstrap, "INFERENCE_PORT": str(ports["inference"]),
            "INFERENCE_GRPC_PORT": str(free_port()), "INFERENCE_TRITON_GRPC_URL": triton.grpc_url,
            "INFERENCE_TRITON_HTTP_URL": triton.http_url,
            "INFERENCE_REDIS_URL": redis_url, "INFERENCE_REDIS_PREFIX": f"load-{unique}:",
            "INFERENCE_GROUP_SUFFIX": f"-load-{unique}", "INFERENCE_REGISTRY_URL": self.urls["registry"],
            "INFERENCE_CANARY_ANALYSIS": "false", "INFERENCE_LOG_LEVEL": "WARNING",
            **(gateway_env or {})}, ready_url=f"{self.urls['inference']}/readyz", log_path=root / "inference.log")
        self.started: list[ServiceProcess] = []

    def start(self) -> None:
        """Start the three services, register the model (champion) and the dataset; wait until both serve."""
        for process in (self.registry, self.ingest, self.gateway):
            process.start()
            self.started.append(process)
        made = subprocess.run([sys.executable, "-m", "registry.cli", "tokens", "create", "--name", "bench-load",
                               "--role", "trainer", "--role", "operator"], env=self.registry.env,
                              capture_output=True, text=True, timeout=120, check=False)
        if made.returncode != 0:
            raise StartError(f"could not create a registry token: {made.stderr}")
        auth = {"Authorization": f"Bearer {made.stdout.strip().splitlines()[-1]}"}
        registry = self.urls["registry"]
        metadata = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, INPUTS]}],
                    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
                    "params": {"purpose": "bounded load benchmark"}}
        r = httpx.post(f"{registry}/v1/models/{self.model}/versions", headers=auth, timeout=120,
                       files={"metadata": (None, json.dumps(metadata), "application/json"),
                              "artifact": ("model.onnx", model_onnx(), "application/octet-stream")})
        if r.status_code != 201:
            raise StartError(f"the registry refused the model: {r.status_code} {r.text[:500]}")
        r = httpx.put(f"{registry}/v1/models/{self.model}/aliases/champion", headers=auth, timeout=60,
                      json={"version": 1, "reason": "bounded load benchmark"})
        if r.status_code != 200:
            raise StartError(f"the registry refused the champion alias: {r.status_code} {r.text[:500]}")
        sync = RepositorySync(self.registry_data / "triton", self.triton)
        self._until(lambda: self.model in sync.sync_once() or self.model in sync.loaded,
                    f"Triton to load {self.model} from the registry's repository ({sync.errors[-1:]})")
        gateway = self.urls["inference"]
        self._until(lambda: _get_json(f"{gateway}/v1/rollout/{self.model}").get("champion") == 1,
                    "the gateway to route the champion from the registry's rollout event")
        self._until(lambda: httpx.post(f"{gateway}/v2/models/{self.model}/infer", json=infer_body(0),
                                       timeout=30).status_code == 200, "a first answer from the gateway")
        r = httpx.post(f"{self.urls['ingest']}/v1/datasets", json=dataset_spec(self.dataset), timeout=30)
        if r.status_code not in (200, 201):
            raise StartError(f"ingest refused the dataset: {r.status_code} {r.text[:500]}")

    def _until(self, check: Callable[[], bool], what: str, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {p.name}\n{p.tail(15)}" for p in self.started)
                raise StartError(f"timed out after {timeout_s}s waiting for {what}\n{tails}")
            time.sleep(0.2)

    def pids(self) -> dict[str, int]:
        """The pid of each running service process."""
        out = {}
        for process in self.started:
            assert process.process is not None
            out[process.name] = process.process.pid
        return out

    def stop(self) -> None:
        """Stop the services in reverse order."""
        for process in reversed(self.started):
            process.stop()


def _get_json(url: str) -> dict[str, Any]:
    try:
        r = httpx.get(url, timeout=10)
    except httpx.HTTPError:
        return {}
    return dict(r.json()) if r.status_code == 200 else {}


# -- the benchmark -------------------------------------------------------------------------------


def window_s(duration_s: float) -> float:
    """The first and last window RSS is compared over: a minute, or a third of a shorter run."""
    return min(60.0, duration_s / 3)


def verdict(result: LoadResult, lost: int, growth: dict[str, tuple[float, float]]) -> list[str]:
    """Every pass criterion that failed, in words (empty: the run passed)."""
    failures = []
    for stream in (result.ingest, result.inference):
        if stream.error_count:
            failures.append(f"{stream.name}: {stream.error_count} errors {dict(stream.errors.most_common(3))}")
    if lost:
        failures.append(f"ingest: {lost} acknowledged events are not in {FEATURES_TOPIC}")
    for name, (first, last) in growth.items():
        bound = RSS_GROWTH_BOUND_MIB[name]
        if last - first > bound:
            failures.append(f"{name}: RSS grew {last - first:.0f} MiB ({first:.0f} -> {last:.0f}), bound {bound:.0f}")
    return failures


def report(result: LoadResult, offered: Offered, sampler: MemorySampler, window: float, lost: int
           ) -> list[tuple[str, str, str, str, str]]:
    """Print the run's table and return its rows for the summary."""
    d = result.duration_s
    growth, cpu_s = sampler.growth(window), sampler.cpu_s
    ing, inf = result.ingest, result.inference
    events_offered = offered.ingest_batches_per_s * offered.batch_events
    print(f"{'service':<10} {'offered':>16} {'achieved':>16} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
          f"{'client lag ms':>13}")
    print(f"{'ingest':<10} {events_offered:>9.0f} ev/s {len(result.acked_event_ids) / d:>11.0f} ev/s "
          f"{ing.percentile_ms(0.5):>8.1f} {ing.percentile_ms(0.99):>8.1f} {ing.error_count:>7} "
          f"{ing.max_start_lag_s * 1000:>13.0f}")
    print(f"{'inference':<10} {offered.infer_per_s:>8.0f} req/s {inf.ok / d:>10.0f} req/s "
          f"{inf.percentile_ms(0.5):>8.1f} {inf.percentile_ms(0.99):>8.1f} {inf.error_count:>7} "
          f"{inf.max_start_lag_s * 1000:>13.0f}")
    for stream in (ing, inf):
        for reason, n in stream.errors.most_common(5):
            print(f"  {stream.name} error x{n}: {reason}")
    print(f"acknowledged events {len(result.acked_event_ids)}, not read back from {FEATURES_TOPIC}: {lost}")
    first_head, last_head = f"RSS max first {window:.0f} s", f"max last {window:.0f} s"
    print(f"{'process':<10} {first_head:>20} {last_head:>16} {'growth':>8} {'bound':>7} {'CPU s/s':>8}")
    for name, (first, last) in growth.items():
        print(f"{name:<10} {first:>16.0f} MiB {last:>12.0f} MiB {last - first:>+8.1f} "
              f"{RSS_GROWTH_BOUND_MIB[name]:>7.0f} {cpu_s.get(name, 0.0) / d:>8.2f}")
    print(f"{'client':<10} {'':>20} {'':>16} {'':>8} {'':>7} {result.client_cpu_s / d:>8.2f}")
    print(f"RSS over time, max MiB in each sixth of the run ({d / 6:.0f} s each):")
    for name, slices in sampler.timeline().items():
        print(f"  {name:<10} " + " ".join(f"{mb:>6.0f}" for mb in slices))

    minutes = f"{d / 60:.1f} min" if d >= 60 else f"{d:.0f} s"
    rows = [
        (f"load ({minutes}, with inference): ingest batches of {offered.batch_events}, events/s, p50 / p99, errors",
         f"{len(result.acked_event_ids) / d:,.0f} ev/s, {ing.percentile_ms(0.5):.1f} / "
         f"{ing.percentile_ms(0.99):.1f} ms, {ing.error_count} errors",
         f"{events_offered:,.0f} ev/s offered", f"{len(result.acked_event_ids) / d / events_offered:.2f}",
         "0 errors; all acked read back"),
        (f"load ({minutes}, with ingest): gateway v2 infer, req/s, p50 / p99, errors",
         f"{inf.ok / d:,.0f} req/s, {inf.percentile_ms(0.5):.1f} / {inf.percentile_ms(0.99):.1f} ms, "
         f"{inf.error_count} errors", f"{offered.infer_per_s:,.0f} req/s offered",
         f"{inf.ok / d / offered.infer_per_s:.2f}", "0 errors"),
    ]
    rows += [(f"load: RSS of {name}, max first vs last {round(window)} s", f"{last:.0f} MiB ({last - first:+.1f})",
              f"{first:.0f} MiB", f"{last / first:.2f}" if first else "-",
              f"growth <= {RSS_GROWTH_BOUND_MIB[name]:.0f} MiB")
             for name, (first, last) in growth.items()]
    return rows


def run(*, quick: bool = False, duration_s: float | None = None,
        offered: Offered | None = None) -> list[tuple[str, str, str, str, str]]:
    """Start the stack, run the load, print and return the table; raise BenchmarkFailed when a criterion fails."""
    duration = duration_s if duration_s is not None else (30.0 if quick else 180.0)
    offered = offered or Offered()
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp_name:
        tmp = Path(tmp_name)
        broker = Broker(tmp / "kafka")
        redis = RedisProcess(tmp / "redis", free_port())
        triton = TritonServer(tmp / "triton-models", tmp / "triton")
        services: LoadServices | None = None
        try:
            broker.start()
            redis.start()
            triton.repository.mkdir(parents=True, exist_ok=True)
            triton.start()
            services = LoadServices(tmp / "services", bootstrap=broker.bootstrap, redis_url=redis.url, triton=triton)
            services.start()
            assert redis.process is not None and triton.process is not None
            pids = {**services.pids(), "triton": triton.process.pid, "redis": redis.process.pid,
                    "kafka": int((broker.data_dir / "broker.pid").read_text())}
            sampler = MemorySampler(pids)
            print(f"offering {offered.ingest_batches_per_s * offered.batch_events:.0f} events/s to ingest "
                  f"(batches of {offered.batch_events}) and {offered.infer_per_s:.0f} req/s to the gateway "
                  f"for {duration:.0f} s", flush=True)
            sampler.start()
            try:
                result = asyncio.run(drive(ingest_url=services.urls["ingest"], gateway_url=services.urls["inference"],
                                           model=services.model, dataset=services.dataset, duration_s=duration,
                                           offered=offered))
            finally:
                sampler.stop()
            observed = set(read_back_ids(broker.bootstrap, services.dataset))
            lost = len(set(result.acked_event_ids) - observed)
            window = window_s(result.duration_s)
            growth = sampler.growth(window)
            rows = report(result, offered, sampler, window, lost)
            dead = [p.name for p in services.started if p.process is None or p.process.poll() is not None]
            failures = verdict(result, lost, growth) + [f"{name} exited during the run" for name in dead]
        finally:
            if services is not None:
                services.stop()
            triton.stop()
            redis.stop()
            broker.stop()
    if failures:
        print("LOAD TEST FAILED:\n  " + "\n  ".join(failures), file=sys.stderr, flush=True)
        raise BenchmarkFailed("; ".join(failures), rows)
    print("load test passed: 0 errors, every acknowledged event read back, RSS growth within bounds")
    return rows
