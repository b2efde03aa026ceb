"""The reliability suite's harness: services as real processes, a ledger of acknowledged events,
topics read back from the beginning, and polling with deadlines.

Every service runs as ``python -m <service>`` (:class:`deploy.localstack.ServiceProcess`) so a
fault is a real ``SIGKILL``; a restart is a new process on the same port and settings, as a
supervisor would do it.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import httpx
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from deploy.localstack import ServiceProcess, free_port
from tests.reliability.cpu_split import TICKS, cpu_ticks

T = TypeVar("T")


def wait_for(check: Callable[[], T | None], what: str | Callable[[], str], timeout_s: float = 60.0,
             every_s: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy; fail the test naming ``what`` at the deadline
    (a callable ``what`` is asked at the deadline, so it can describe the state then)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            pytest.fail(f"timed out after {timeout_s}s waiting for {said}", pytrace=False)
        time.sleep(every_s)


def kill9(process: ServiceProcess) -> int:
    """``SIGKILL`` the service (no shutdown code runs); returns the dead pid."""
    assert process.process is not None and process.process.poll() is None, f"{process.name} is not running"
    pid = process.process.pid
    os.kill(pid, signal.SIGKILL)
    process.process.wait(10)
    return pid


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (from /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def connections_to(pid: int, ports: Iterable[int]) -> int:
    """Open TCP connections of process ``pid`` to any of ``ports`` on the loopback (from /proc).

    A connection counts when one of the process's sockets is established (or still being opened)
    with one of ``ports`` as its remote end.
    """
    wanted = set(ports)
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:              # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            state = fields[3]        # 01 established, 02 SYN sent
            if remote_port in wanted and state in ("01", "02") and fields[9] in inodes:
                count += 1
    return count


def ingest_process(bootstrap: str, logs: Path, *, port: int | None = None, **extra: str) -> ServiceProcess:
    """An ingest service process (raw-topic validation off unless asked for)."""
    port = port or free_port()
    env = {"INGEST_KAFKA_BOOTSTRAP": bootstrap, "INGEST_PORT": str(port), "INGEST_LOG_JSON": "false",
           "INGEST_CONSUME_RAW": "false", "INGEST_STARTUP_TIMEOUT_S": "60", **extra}
    return ServiceProcess("ingest", "ingest", env, ready_url=f"http://127.0.0.1:{port}/readyz",
                          log_path=logs / f"ingest-{port}.log")


def drift_process(bootstrap: str, logs: Path, app_id: str, *, port: int | None = None,
                  registry_url: str = "http://127.0.0.1:9", **extra: str) -> ServiceProcess:
    """A drift service process with its own app id (consumer group and changelog) and state folder."""
    port = port or free_port()
    env = {"DRIFT_KAFKA_BOOTSTRAP": bootstrap, "DRIFT_APP_ID": app_id, "DRIFT_PORT": str(port),
           "DRIFT_REGISTRY_URL": registry_url, "DRIFT_REGISTRY_TIMEOUT_S": "1",
           "DRIFT_STATE_DIR": str(logs / f"drift-state-{port}"), "DRIFT_LOG_JSON": "false", **extra}
    return ServiceProcess("drift", "drift", env, ready_url=f"http://127.0.0.1:{port}/readyz",
                          log_path=logs / f"drift-{port}.log")


def gateway_process(triton_grpc_url: str, bootstrap: str, redis_url: str, repo: Path, logs: Path, *,
                    rollout_topic: str, **extra: str) -> ServiceProcess:
    """An inference gateway process on Triton at ``triton_grpc_url`` with the registry repository ``repo``.

    Only routing and inference: canary analysis, the feature, label and request consumers are off;
    its own Redis prefix; ``extra`` adds or overrides ``INFERENCE_*`` settings.
    """
    port = int(extra.pop("INFERENCE_PORT", "0")) or free_port()
    env = {"INFERENCE_TRITON_GRPC_URL": triton_grpc_url, "INFERENCE_REDIS_URL": redis_url,
           "INFERENCE_KAFKA_BOOTSTRAP": bootstrap, "INFERENCE_PORT": str(port),
           "INFERENCE_GRPC_PORT": str(free_port()), "INFERENCE_REDIS_PREFIX": f"gw-{uuid.uuid4().hex[:8]}:",
           "INFERENCE_ROLLOUT_TOPIC": rollout_topic, "INFERENCE_CANARY_ANALYSIS": "false",
           "INFERENCE_CONSUME_FEATURES": "false", "INFERENCE_JOIN_LABELS": "false",
           "INFERENCE_CONSUME_REQUESTS": "false", "INFERENCE_LOG_JSON": "false",
           "INFERENCE_MODEL_REPOSITORY": str(repo), **extra}
    return ServiceProcess("inference", "inference", env, ready_url=f"http://127.0.0.1:{port}/readyz",
                          log_path=logs / f"inference-{port}.log")


Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]
"""A service's ``/metrics`` samples: (name, sorted labels) -> value."""


def metrics_of(url: str) -> Metrics:
    """Every sample of the service at ``url``'s ``/metrics``."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric_sum(metrics: Metrics, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in metrics.items() if n == name and set(labels.items()) <= set(ls))


def proxied_gateway(triton: Any, proxy_url: str, bootstrap: str, redis_url: str, logs: Path, *,
                    versions: tuple[int, ...], **extra: str) -> tuple[ServiceProcess, str]:
    """A started gateway serving the suite's model (``versions`` loaded in ``triton``), its inference calls to
    Triton through the fault proxy at ``proxy_url``, on a rollout topic of its own; the process and its URL."""
    from services.inference.tests.integration.conftest import MODEL, make_topics
    from services.inference.tests.onnx_models import all_versions, write_registry_model
    from tests.fixtures.triton import add_model

    repo = logs / "repo"
    write_registry_model(repo, MODEL, all_versions())
    add_model(triton, repo, MODEL, versions=versions)
    rollout_topic = f"test.rollout.{uuid.uuid4().hex[:8]}"
    make_topics(bootstrap, rollout_topic)
    gateway = gateway_process(triton.grpc_url, bootstrap, redis_url, repo, logs, rollout_topic=rollout_topic,
                              INFERENCE_TRITON_HTTP_URL=proxy_url, **extra)
    gateway.start()
    return gateway, f"http://127.0.0.1:{port_of(gateway)}"


def set_rollout(url: str, model: str, alias: str, version: int | None, *, weight: float | None = None,
                reason: str = "test") -> None:
    """Point ``alias`` of ``model`` at ``version`` through the gateway at ``url``'s operator API (200 or fail)."""
    r = httpx.put(f"{url}/v1/rollout/{model}", json={"alias": alias, "version": version, "weight": weight,
                                                    "reason": reason}, timeout=30)
    assert r.status_code == 200, r.text


def port_of(process: ServiceProcess) -> int:
    """The HTTP port a service process listens on (from its readiness URL)."""
    return int(process.ready_url.rsplit(":", 1)[1].split("/", 1)[0])


def restart(process: ServiceProcess, timeout_s: float = 120.0) -> None:
    """Start the process again on the same port and settings (the supervisor's restart)."""
    process.start(timeout_s)


@dataclass
class Record:
    """One record read back from a topic."""

    partition: int
    offset: int
    key: str | None
    value: dict[str, Any]
    headers: dict[str, bytes] = field(default_factory=dict)


def committed_offset(bootstrap: str, group: str, topic: str, partition: int = 0) -> int:
    """The offset ``group`` committed on ``partition`` of ``topic`` (-1001 when none)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        (tp,) = consumer.committed([TopicPartition(topic, partition)], timeout=30)
        return int(tp.offset)
    finally:
        consumer.close()


def read_topic(bootstrap: str, topic: str, *, match: Callable[[Record], bool] = lambda r: True,
               timeout_s: float = 30.0) -> list[Record]:
    """Every record of ``topic`` from the beginning up to the current end (``read_committed``) that matches."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reliability-reader-{uuid.uuid4()}",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        found: list[Record] = []
        position = {p: -1 for p in partitions}
        deadline = time.monotonic() + timeout_s
        while any(position[p] + 1 < ends[p] for p in partitions):
            if time.monotonic() > deadline:
                pytest.fail(f"{topic}: could not read up to {ends} within {timeout_s}s (at {position})", pytrace=False)
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            partition, offset = msg.partition(), msg.offset()
            assert partition is not None and offset is not None
            position[partition] = offset
            raw_key = msg.key()
            try:
                value = json.loads(msg.value() or b"null")
            except ValueError:              # a poison record (another test's): not JSON at all
                value = None
            record = Record(partition, offset, raw_key.decode("utf-8", "replace") if isinstance(raw_key, bytes)
                            else raw_key, value if isinstance(value, dict) else {"undecodable": msg.value()},
                            {k: v or b"" for k, v in msg.headers() or []})
            if match(record):
                found.append(record)
        return found
    finally:
        consumer.close()


@dataclass
class Verdict:
    """The checker's figures over one topic (plan section 6.1): lost, raw duplicates, order violations."""

    acked: int
    observed: int
    lost: set[str]
    raw_duplicates: int
    order_violations: list[str]


def check_ledger(acked: Iterable[str], records: list[Record], *, seq_of: Callable[[dict[str, Any]], int]
                 ) -> Verdict:
    """Compare the acknowledged ids with the records of a topic.

    ``lost`` = acked - observed (must be empty); ``raw_duplicates`` counts records whose event id
    was already seen; per key, the sequence numbers of first occurrences must rise with the
    offset (the client sends each key's events in order).
    """
    acked_set = set(acked)
    seen: set[str] = set()
    duplicates = 0
    by_key: dict[tuple[int, str | None], list[tuple[int, int]]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        event_id = r.value["payload"]["event_id"]
        if event_id in seen:
            duplicates += 1
            continue
        seen.add(event_id)
        by_key[(r.partition, r.key)].append((r.offset, seq_of(r.value["payload"])))
    violations = [f"key {key}: {[s for _, s in rows]}" for (_, key), rows in by_key.items()
                  if [s for _, s in rows] != sorted(s for _, s in rows)]
    return Verdict(len(acked_set), len(seen), acked_set - seen, duplicates, violations)


@dataclass
class Sent:
    """One HTTP attempt of the load generator."""

    started: float
    seconds: float
    status: int | None
    error: str | None = None
    retry_after: str | None = None


@dataclass
class FeatureClient:
    """A client that sends feature events in batches, in order, and resends every unacknowledged batch
    with the *same* event ids until ingest acknowledges it (max ``retries``).

    ``acked`` is the ledger: ids ingest answered 200 for. ``attempts`` records every request.
    With ``resend=False`` each batch is sent once whatever the answer (plan K3: only the producer's
    own retries happen), and the ids a 429 or 503 lists as ``accepted_event_ids`` join the ledger:
    ingest acknowledged them too.
    """

    url: str
    dataset: str
    keys: int = 12
    batch: int = 20
    timeout_s: float = 15.0
    retries: int = 200
    rate_per_s: float = 200.0
    """Offered load in events per second (the client paces its batches)."""
    resend: bool = True
    """Resend an unacknowledged batch (True) or move on to the next one (False)."""
    acked: list[str] = field(default_factory=list)
    attempts: list[Sent] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def events(self, start: int, n: int) -> list[dict[str, Any]]:
        return [{"event_id": f"{self.dataset}-{i}", "dataset": self.dataset, "entity_id": f"k{i % self.keys}",
                 "event_time": f"2026-05-01T00:{(i // 60) % 60:02d}:{i % 60:02d}Z",
                 "features": {"seq": i, "x": float(i % 7)}} for i in range(start, start + n)]

    def run(self, total: int) -> None:
        began = time.monotonic()
        with httpx.Client(timeout=self.timeout_s) as client:
            for start in range(0, total, self.batch):
                if self._stop.is_set():
                    return
                ahead = began + start / self.rate_per_s - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)   # pacing: the offered rate, not a wait for a condition
                events = self.events(start, min(self.batch, total - start))
                for _ in range(self.retries):
                    t0 = time.monotonic()
                    try:
                        response = client.post(f"{self.url}/v1/events/batch", json=events)
                    except httpx.HTTPError as exc:
                        self.attempts.append(Sent(t0, time.monotonic() - t0, None, type(exc).__name__))
                        if not self.resend:
                            break
                        time.sleep(0.2)      # the client's backoff before resending the same ids
                        continue
                    self.attempts.append(Sent(t0, time.monotonic() - t0, response.status_code,
                                              retry_after=response.headers.get("retry-after")))
                    if response.status_code == 200:
                        with self._lock:
                            self.acked.extend(e["event_id"] for e in events)
                        break
                    if response.status_code not in (429, 503):
                        self.failures.append(f"{response.status_code}: {response.text[:300]}")
                        return
                    if not self.resend:
                        with self._lock:
                            self.acked.extend(response.json().get("accepted_event_ids", []))
                        break
                    time.sleep(min(float(response.headers.get("retry-after", "1")), 1.0))
                else:
                    self.failures.append(f"batch at {start} never acknowledged")
                    return

    def start(self, total: int) -> FeatureClient:
        self._thread = threading.Thread(target=self.run, args=(total,), name="feature-client", daemon=True)
        self._thread.start()
        return self

    def count(self) -> int:
        with self._lock:
            return len(self.acked)

    def join(self, timeout_s: float) -> None:
        assert self._thread is not None
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._stop.set()
            pytest.fail(f"the client did not finish within {timeout_s}s ({self.count()} acked)", pytrace=False)
        assert not self.failures, self.failures


def register_dataset(url: str, name: str) -> None:
    """Register the suite's dataset spec (numeric ``seq`` and ``x``, binary label) with ingest."""
    spec = {"name": name, "label": {"type": "binary"},
            "features": [{"name": "seq", "type": "numeric"}, {"name": "x", "type": "numeric"}]}
    response = httpx.post(f"{url}/v1/datasets", json=spec, timeout=30)
    assert response.status_code in (200, 201), response.text
@dataclass
class Sampler:
    """Calls :meth:`sample` every ``interval_s`` in a thread of its own, from :meth:`start` until :meth:`stop`.

    Sampling ends by itself when what it reads is gone (a process that exited: its ``/proc`` files
    vanish); the samples so far stay.
    """

    interval_s: ClassVar[float] = 0.1
    thread_name: ClassVar[str] = "sampler"
    _stop: threading.Event = field(default_factory=threading.Event, kw_only=True, repr=False)
    _thread: threading.Thread | None = field(default=None, kw_only=True, repr=False)

    def sample(self) -> None:
        """Take one sample (subclasses)."""
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except (FileNotFoundError, ProcessLookupError, RuntimeError):  # what it reads is gone
                return

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


@dataclass
class Usage(Sampler):
    """Samples a process's resident memory and its TCP connections to ``ports`` every 0.1 s."""

    thread_name: ClassVar[str] = "usage-sampler"
    pid: int
    ports: tuple[int, ...]
    samples: list[tuple[float, float, int]] = field(default_factory=list)
    """(monotonic time, RSS in MiB, connections)."""

    def sample(self) -> None:
        self.samples.append((time.monotonic(), rss_mb(self.pid), connections_to(self.pid, self.ports)))

    def between(self, t0: float, t1: float) -> list[tuple[float, float, int]]:
        return [s for s in self.samples if t0 <= s[0] < t1]


@dataclass
class CpuWait(Sampler):
    """Samples, every 20 ms, how long some threads have waited for a CPU (run-queue time, from schedstat).

    On the two shared cores of the test bed an answer can be late only because the gateway's event
    loop, or the caller's, was runnable but not running; these samples tell that time apart from
    time the gateway itself made a request wait.
    """

    interval_s: ClassVar[float] = 0.02
    thread_name: ClassVar[str] = "cpu-wait-sampler"
    paths: list[Path]
    samples: list[tuple[float, float]] = field(default_factory=list)
    """(monotonic time, seconds the threads waited for a CPU so far, summed)."""

    def sample(self) -> None:
        self.samples.append((time.monotonic(), sum(int(p.read_text().split()[1]) for p in self.paths) / 1e9))

    def waited(self, t0: float, t1: float) -> float:
        """Run-queue time of the threads from the last sample at or before ``t0`` to the first at or after ``t1``."""
        before = [w for t, w in self.samples if t <= t0]
        after = [w for t, w in self.samples if t >= t1]
        if not before or not after:
            return 0.0
        return after[0] - before[-1]


@dataclass
class Rss(Sampler):
    """Samples the resident memory of some processes every 0.5 s (only that: :class:`Usage` also reads
    the socket tables every 0.1 s, a cost that grows with the sampling process's own connections)."""

    interval_s: ClassVar[float] = 0.5
    thread_name: ClassVar[str] = "rss-sampler"
    pids: dict[str, int]
    samples: dict[str, list[float]] = field(default_factory=dict)

    def sample(self) -> None:
        for name, pid in self.pids.items():
            self.samples.setdefault(name, []).append(rss_mb(pid))

    def growth(self) -> dict[str, float]:
        """MiB from the first sample to the highest, by process."""
        return {name: round(max(s) - s[0], 1) for name, s in self.samples.items()}




def busiest_processes(seconds: float = 1.0, top: int = 6) -> str:
    """The processes that used the most CPU over the next ``seconds`` (share of one CPU, command line), and the
    load average: for failure messages of timing criteria, to tell the system's slowness from other work."""

    def ticks() -> dict[int, int]:
        found = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and (used := cpu_ticks(int(entry.name))) is not None:
                found[int(entry.name)] = used
        return found

    def command(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:100]
        except OSError:
            return "(gone)"

    before = ticks()
    time.sleep(seconds)
    after = ticks()
    used = sorted(((t - before[pid]) / TICKS / seconds, pid) for pid, t in after.items() if pid in before)[-top:]
    listed = "; ".join(f"{share:.0%} pid {pid} {command(pid)}" for share, pid in reversed(used) if share > 0)
    return f"load average {os.getloadavg()[0]:.1f}; busiest over {seconds:.0f} s: {listed or 'none'}"
