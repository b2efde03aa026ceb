"""Frozen processes: the broker and Triton stopped with ``SIGSTOP`` and resumed with ``SIGCONT``
(the Trogdor ProcessStopFault). A frozen peer keeps its TCP connections open and answers nothing,
which is harder for a client than a dead one: nothing is refused, every call just waits.

K3, the broker frozen for 30 s while a client sends batches to ingest once each (no resending, so
the only retries are the idempotent producer's own). Pass criteria:
- every answer is 200, or 503/429 with ``Retry-After``, each within ingest's own timeouts (enqueue
  1 s + delivery 5 s, which librdkafka checks once a second: + 1 s) + 1 s: nothing hangs;
  readiness answers 503 naming the broker within its 1 s probe timeout + 1 s;
- after ``SIGCONT`` ingest answers 200 again within 15 s, without a restart;
- L = 0: every acknowledged id (whole 200 batches and the ``accepted_event_ids`` of partial
  answers) is in the topic; D_raw = 0: no event id twice in the topic (the client never resent,
  so a duplicate could only come from a producer retry the idempotent producer failed to dedupe);
  per-key order of the records in the topic is the client's order.

G3, Triton (server and its backend stubs) frozen for 10 s under an open-loop stream of ~100 one-row
requests a second to the gateway (backend deadline 300 ms, concurrency limit 32, circuit breaker
at its defaults: open after 5 consecutive calls without an answer, one probe every 2 s; no
fallback). Pass criteria (plan G3):
- every answer is 200, or 503/504 with ``Retry-After`` saying Triton did not answer, or (at most 2%)
  429 with ``Retry-After`` where the concurrency limit is met: at the freeze's onset ~30 calls wait
  out the deadline against a limit of 32; every request, before, during and after the freeze, is
  answered within 350 ms (the deadline + 50 ms) on the gateway's account, i.e. less the time its
  event loop and the caller's waited for a CPU (on two shared cores that wait alone reaches seconds;
  at least 99% within 350 ms, all within the deadline + 1 s): nothing waits on the frozen Triton
  beyond its deadline, and once the breaker is open nothing waits at all; readiness answers within
  the deadline + 1 s and names the open breaker;
- the breaker opened during the freeze and sent half-open probes, which failed while Triton was
  frozen (the gateway's ``/metrics`` counters and its log say so);
- after ``SIGCONT`` the first 200 comes within 5 s (a probe succeeded and closed the breaker), and
  at least 99% of the requests started 5 s after ``SIGCONT`` or later are 200;
- no unbounded queue: gateway RSS growth < 50 MB; its connections to Triton stay within the
  concurrency limit (plus the one gRPC connection for metadata and health).
The same freeze with ``INFERENCE_FALLBACK=onnxruntime``: every answer is 200 (at most 2% shed with
429), 99% within the deadline + 1 s less the CPU waits (the fallback's own worker threads wait for
a CPU too), served by onnxruntime while the breaker is open.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deploy.localstack import Broker, ServiceProcess
from schemas import topics
from services.inference.tests.integration.conftest import MODEL, make_topics, v2_body
from services.inference.tests.onnx_models import all_versions, write_registry_model
from tests.fixtures.triton import TritonServer, add_model
from tests.reliability.paced_load import Answer, PacedLoad, judge_answer_times, own_seconds, status_summary
from tests.reliability.processes import (
    CpuWait,
    FeatureClient,
    Usage,
    check_ledger,
    gateway_process,
    ingest_process,
    port_of,
    read_topic,
    register_dataset,
    wait_for,
)

pytestmark = pytest.mark.integration

DELIVERY_TIMEOUT_S = 5.0
ENQUEUE_TIMEOUT_S = 1.0
BROKER_FREEZE_S = 30.0
BACKEND_TIMEOUT_S = 0.3
"""The gateway's deadline of each Triton call in the Triton freeze tests (plan G3)."""
ANSWER_WITHIN_S = 0.35
"""Every request to the gateway is answered within this (plan G3), on the gateway's account: the caller's time
less the time the gateway's event loop and the caller's waited for a CPU meanwhile (run-queue time). Measured on
the two shared cores of the test bed, the caller's raw times reach 0.4-3 s under other work (p99 0.4-1.7 s at
load average 5-9), all of it CPU starvation; less the CPU waits they stayed within 0.25-0.39 s (p99 50-230 ms).
Asserted: at least 99% within this, and every one within the deadline + :data:`SLACK_S`."""
TRITON_FREEZE_S = 10.0
RATE_PER_S = 100.0
"""Requests a second offered to the gateway during the Triton freeze (open loop); ``G3_RATE`` overrides it (the
plan's advice for a latency failure on two cores: run again at half the rate, and record both)."""
MAX_INFLIGHT = 32
"""The gateway's concurrency limit in the Triton freeze tests (plan G3): also the bound on its connections to Triton."""
RECOVERED_WITHIN_S = 5.0
"""After SIGCONT: the first 200 within this, and >= 99% of the requests started this long after it are 200."""
OBSERVED_AFTER_S = 5.0
"""How long the requests are watched once they are due to be back at >= 99%."""
TIMEOUT_SCAN_S = 1.0
"""librdkafka scans for timed-out messages once a second: a delivery timeout fires up to this late."""
SLACK_S = 1.0
"""Allowed on top of a service's own timeout for scheduling on two busy cores."""


@dataclass
class Frozen:
    """A process (or process group) stopped with SIGSTOP; resumed with SIGCONT at the latest on exit."""

    pid: int
    group: bool = False
    stopped_at: float = 0.0
    resumed_at: float | None = None

    def _signal(self, sig: int) -> None:
        (os.killpg if self.group else os.kill)(self.pid, sig)

    def stop(self) -> Frozen:
        self._signal(signal.SIGSTOP)
        self.stopped_at = time.monotonic()
        return self

    def resume(self) -> None:
        if self.resumed_at is None:
            self._signal(signal.SIGCONT)
            self.resumed_at = time.monotonic()


@pytest.fixture
def freezer() -> Iterator[list[Frozen]]:
    """Every process a test froze is resumed at its end, whatever happened (teardown needs them alive)."""
    frozen: list[Frozen] = []
    yield frozen
    for f in frozen:
        f.resume()


# -- K3: the broker frozen -----------------------------------------------------------------------------


def test_frozen_broker_gets_503_within_the_timeouts_and_loses_nothing_acknowledged(
        private_broker: Broker, freezer: list[Frozen], tmp_path: Path, unique: str) -> None:
    dataset = f"freeze-{unique}"
    ingest = ingest_process(private_broker.bootstrap, tmp_path, INGEST_DELIVERY_TIMEOUT_S=str(DELIVERY_TIMEOUT_S),
                            INGEST_ENQUEUE_TIMEOUT_S=str(ENQUEUE_TIMEOUT_S), INGEST_READINESS_TIMEOUT_S="1")
    ingest.start()
    url = f"http://127.0.0.1:{port_of(ingest)}"
    assert ingest.process is not None
    pid = ingest.process.pid
    try:
        register_dataset(url, dataset)
        client = FeatureClient(url, dataset, batch=10, rate_per_s=100, timeout_s=60, resend=False).start(6000)
        wait_for(lambda: client.count() >= 300, "300 acknowledged events before the freeze", 60)

        broker = Frozen(int((private_broker.data_dir / "broker.pid").read_text()))
        freezer.append(broker.stop())
        asked = time.monotonic()
        ready = httpx.get(f"{url}/readyz", timeout=30)
        ready_s = time.monotonic() - asked
        assert ready.status_code == 503 and "Kafka broker unreachable" in ready.json()["reason"], ready.text
        assert ready_s <= 1.0 + SLACK_S, ready_s
        wait_for(lambda: time.monotonic() - broker.stopped_at >= BROKER_FREEZE_S
                 and any(a.status == 503 for a in client.attempts if a.started > broker.stopped_at),
                 f"{BROKER_FREEZE_S:.0f} s of freeze and a 503", BROKER_FREEZE_S + 60)
        broker.resume()
        assert broker.resumed_at is not None
        first = wait_for(lambda: next((a for a in list(client.attempts)
                                       if a.started > (broker.resumed_at or 0) and a.status == 200), None),
                         "a 200 after the broker resumed", 60)
        first_ok_s = first.started + first.seconds - broker.resumed_at
        client.join(180)

        attempts = list(client.attempts)
        during = [a for a in attempts if broker.stopped_at <= a.started < broker.resumed_at]
        statuses = {(a.status, a.error) for a in attempts}
        assert all(a.status in (200, 429, 503) for a in attempts), statuses
        assert all(a.retry_after == "1" for a in attempts if a.status in (429, 503))
        slowest = max(a.seconds for a in attempts)
        assert slowest <= ENQUEUE_TIMEOUT_S + DELIVERY_TIMEOUT_S + TIMEOUT_SCAN_S + SLACK_S, slowest
        assert sum(1 for a in during if a.status == 503) >= 3, [(a.status, round(a.seconds, 1)) for a in during]
        assert first_ok_s <= 15, first_ok_s
        assert ingest.process.poll() is None and ingest.process.pid == pid       # never restarted

        records = read_topic(private_broker.bootstrap, topics.FEATURES,
                             match=lambda r: r.value.get("payload", {}).get("dataset") == dataset)
        verdict = check_ledger(client.acked, records, seq_of=lambda p: int(p["features"]["seq"]))
        unacked_written = verdict.observed - (verdict.acked - len(verdict.lost))
        print(f"attempts={len(attempts)} during freeze={len(during)} (503: "
              f"{sum(1 for a in during if a.status == 503)}) slowest={slowest:.1f}s readiness={ready_s:.1f}s "
              f"first 200 after resume={first_ok_s:.1f}s acked={verdict.acked} observed={verdict.observed} "
              f"(written but not acknowledged: {unacked_written}) D_raw={verdict.raw_duplicates}")
        assert verdict.lost == set()
        assert verdict.raw_duplicates == 0
        assert verdict.order_violations == []
    finally:
        for f in freezer:
            f.resume()
        ingest.stop()


# -- G3: Triton frozen ---------------------------------------------------------------------------------


HUNG_S = 20.0
"""How long after SIGCONT the local Triton may take to answer before it is probed directly."""


def _triton_again(server: TritonServer, load: PacedLoad, resumed: float, matches: Callable[[Answer], bool],
                  what: Callable[[], str]) -> Answer | None:
    """The first answer that ``matches`` after SIGCONT; None when the test bed's Triton itself is hung.

    The CPU Triton of this test bed runs each model in a Python-backend stub that talks to the
    server over shared memory with timed interprocess locks; a SIGSTOP/SIGCONT of the group can
    leave the server stuck on one for good (seen on CI: its log ends in
    ``boost::interprocess::lock_exception`` when it is stopped). When no answer came within
    :data:`HUNG_S`, Triton is asked directly: if it does not answer either, the recovery cannot be
    judged (None); if it does, the gateway has 60 s more to find it, then the test fails.
    """
    deadline = time.monotonic() + HUNG_S
    while time.monotonic() < deadline:
        found = next((a for a in load.since(resumed) if matches(a)), None)
        if found is not None:
            return found
        time.sleep(0.1)
    try:
        direct = httpx.post(f"{server.http_url}/v2/models/{MODEL}/versions/1/infer",
                            json=v2_body([[1.0, 2.0, 3.0, 4.0]]), timeout=5)
        hung = direct.status_code != 200
    except httpx.HTTPError:
        hung = True
    if hung:
        return None
    return wait_for(lambda: next((a for a in load.since(resumed) if matches(a)), None), what, 60)


def _hung(server: TritonServer) -> NoReturn:
    """Say that the recovery was not judged because Triton itself stayed hung (an expected failure)."""
    pytest.xfail(f"the test bed's Triton gave no answer {HUNG_S:.0f}s after SIGCONT, not even when asked "
                 f"directly (its Python-backend stubs hang after a freeze at times); everything up to the "
                 f"resume was checked. Triton's log:\n{server.tail()}")


def _gateway(triton: TritonServer, kafka_bootstrap: str, redis_url: str, repo: Path, logs: Path,
             fallback: str = "none", transport: str = "grpc") -> ServiceProcess:
    """A gateway on ``triton``; ``transport="http"`` sends its inference calls over Triton's HTTP endpoint.

    The circuit breaker keeps its defaults (5 failures, 2 s cooldown): the test judges the shipped behaviour.
    """
    rollout_topic = f"test.rollout.{uuid.uuid4().hex[:8]}"
    make_topics(kafka_bootstrap, rollout_topic)
    extra = {"INFERENCE_FALLBACK": fallback, "INFERENCE_BACKEND_TIMEOUT_S": str(BACKEND_TIMEOUT_S),
             "INFERENCE_MAX_INFLIGHT": str(MAX_INFLIGHT)}
    if transport == "http":
        extra["INFERENCE_TRITON_HTTP_URL"] = triton.http_url
    return gateway_process(triton.grpc_url, kafka_bootstrap, redis_url, repo, logs, rollout_topic=rollout_topic,
                           **extra)


@dataclass
class BreakerView:
    """The breaker as the gateway's ``/metrics`` shows it."""

    opened: int
    """Transitions closed -> open and half-open -> open."""
    closed: int
    """Transitions half-open -> closed."""
    probes: dict[tuple[str, str], int]
    """Half-open probes by (kind, outcome)."""

    def probes_with(self, outcome: str) -> int:
        return sum(n for (_, o), n in self.probes.items() if o == outcome)


def _breaker(url: str) -> BreakerView:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    moves: dict[tuple[str, str], int] = {}
    probes: dict[tuple[str, str], int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "inference_breaker_transitions_total" and labels.get("backend") == "triton":
                moves[labels["from_state"], labels["to_state"]] = int(sample.value)
            elif sample.name == "inference_breaker_probes_total" and labels.get("backend") == "triton":
                probes[labels["kind"], labels["outcome"]] = int(sample.value)
    opened = moves.get(("closed", "open"), 0) + moves.get(("half_open", "open"), 0)
    return BreakerView(opened, moves.get(("half_open", "closed"), 0), probes)


def _latencies(answers: list[Answer], cpu: CpuWait | None = None) -> str:
    """Percentiles and the slowest answers (status, ms), for messages; with ``cpu``, also without the CPU waits."""
    if not answers:
        return "no answers"

    def summary(seconds: list[float]) -> str:
        seconds = sorted(seconds)
        p50, p99 = (seconds[min(len(seconds) - 1, int(p * len(seconds)))] for p in (0.5, 0.99))
        return f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {seconds[-1] * 1000:.0f} ms"

    text = summary([a.seconds for a in answers])
    if cpu is not None:
        text += f" (without the CPU waits: {summary([own_seconds(a, cpu) for a in answers])})"
    return text


def _answer_times(answers: list[Answer], cpu: CpuWait, *, within_s: float, share: float, at_most_s: float
                  ) -> str | None:
    """Why the answers' times on the gateway's account miss the bounds, or None when they meet them."""
    own = sorted(own_seconds(a, cpu) for a in answers)
    within = sum(o <= within_s for o in own) / len(own)
    if within >= share and own[-1] <= at_most_s:
        return None
    return (f"{within:.2%} of the answers within {within_s * 1000:.0f} ms (needed {share:.0%}), the slowest "
            f"{own[-1] * 1000:.0f} ms (allowed {at_most_s * 1000:.0f} ms), less the CPU waits; "
            f"{_latencies(answers, cpu)}")


@dataclass
class FreezeRun:
    """What :func:`_freeze_under_load` saw."""

    load: PacedLoad
    triton: Frozen
    cpu: CpuWait
    ready: httpx.Response
    """Readiness halfway through the freeze."""
    ready_s: float
    first: Answer | None
    """The first answer after SIGCONT that matched (None: the test bed's Triton stayed hung)."""
    at_resume: BreakerView
    at_end: BreakerView

    @property
    def resumed(self) -> float:
        assert self.triton.resumed_at is not None
        return self.triton.resumed_at


def _freeze_under_load(private_triton: TritonServer, gateway: ServiceProcess, url: str, freezer: list[Frozen],
                       back: Callable[[Answer], bool]) -> FreezeRun:
    """Load, freeze Triton for TRITON_FREEZE_S, resume, wait for an answer that is ``back``, watch the recovery."""
    assert private_triton.process is not None and gateway.process is not None
    load = PacedLoad(url, rate=float(os.environ.get("G3_RATE", RATE_PER_S))).start()
    cpu: CpuWait | None = None
    try:
        wait_for(lambda: load.native_id, "the load's event loop", 10)
        pid = gateway.process.pid
        # The gateway's event loop runs in its main thread.
        cpu = CpuWait([Path(f"/proc/{pid}/task/{pid}/schedstat"),
                       Path(f"/proc/{os.getpid()}/task/{load.native_id}/schedstat")]).start()
        wait_for(lambda: sum(1 for a in load.answers if back(a)) >= 50,
                 lambda: f"50 answers from Triton before the freeze (so far: {load})", 120)
        triton = Frozen(private_triton.process.pid, group=True)   # the server and its Python-backend stubs
        freezer.append(triton.stop())
        wait_for(lambda: time.monotonic() - triton.stopped_at >= TRITON_FREEZE_S / 2, "half the freeze", 30)
        asked = time.monotonic()
        ready = httpx.get(f"{url}/readyz", timeout=60)
        ready_s = time.monotonic() - asked
        wait_for(lambda: time.monotonic() - triton.stopped_at >= TRITON_FREEZE_S, "the whole freeze", 30)
        at_resume = _breaker(url)
        triton.resume()
        resumed = triton.resumed_at
        assert resumed is not None
        first = _triton_again(
            private_triton, load, resumed, back,
            lambda: f"an answer from Triton after it resumed (since then: {status_summary(load.since(resumed))})\n"
            f"client failures: {load.failures[-3:]}\nTriton's log:\n{private_triton.tail()}\n"
            f"gateway's log:\n{gateway.tail()}")
        if first is not None:
            watch_until = resumed + RECOVERED_WITHIN_S + OBSERVED_AFTER_S
            wait_for(lambda: time.monotonic() >= watch_until, "the recovery window", 60)
        at_end = _breaker(url)
    finally:
        load.stop()
        if cpu is not None:
            cpu.stop()
    return FreezeRun(load, triton, cpu, ready, ready_s, first, at_resume, at_end)


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_frozen_triton_gives_fast_clean_errors_behind_the_breaker_and_recovers(
        private_triton: TritonServer, kafka_bootstrap: str, redis_url: str, freezer: list[Frozen],
        tmp_path: Path, transport: str) -> None:
    repo = tmp_path / "repo"
    write_registry_model(repo, MODEL, all_versions())
    add_model(private_triton, repo, MODEL)
    gateway = _gateway(private_triton, kafka_bootstrap, redis_url, repo, tmp_path, transport=transport)
    gateway.start()
    url = f"http://127.0.0.1:{port_of(gateway)}"
    assert gateway.process is not None and private_triton.process is not None
    pid = gateway.process.pid
    triton_ports = tuple(int(u.rsplit(":", 1)[1]) for u in (private_triton.grpc_url, private_triton.http_url))
    usage = Usage(pid, triton_ports).start()
    try:
        r = httpx.put(f"{url}/v1/rollout/{MODEL}", json={"alias": "champion", "version": 1, "reason": "test"},
                      timeout=30)
        assert r.status_code == 200, r.text
        run = _freeze_under_load(private_triton, gateway, url, freezer, lambda a: a.status == 200)
        alive = gateway.process.poll() is None
    finally:
        usage.stop()
        for f in freezer:
            f.resume()
        gateway.stop()

    triton, resumed, first, cpu = run.triton, run.resumed, run.first, run.cpu
    answers = run.load.answers
    during = [a for a in answers if triton.stopped_at <= a.started < resumed]
    turned_away = [a for a in during if a.status == 503 and "circuit breaker" in a.body]
    waited = [a for a in during if a.status == 504]
    before_freeze = usage.between(0, triton.stopped_at)
    after = usage.between(triton.stopped_at, float("inf"))
    rss_growth = max(s[1] for s in after) - before_freeze[-1][1]
    most_connections = max(s[2] for s in usage.samples)
    log = gateway.log_path.read_text(errors="replace")
    recovered = [a for a in answers if a.started >= resumed + RECOVERED_WITHIN_S]
    ok_share = sum(a.status == 200 for a in recovered) / len(recovered) if recovered else 0.0
    late = [a for a in answers if a.seconds > ANSWER_WITHIN_S]
    print(f"transport={transport} answers={len(answers)} (client skipped {run.load.skipped} slots) during the "
          f"freeze={len(during)}: {len(turned_away)} turned away by the breaker, {len(waited)} waited out the "
          f"deadline (504), {sum(a.status == 429 for a in during)} shed (429); latency {_latencies(answers, cpu)}; "
          f"during the freeze {_latencies(during, cpu)}; "
          f"{len(late)} answers over {ANSWER_WITHIN_S * 1000:.0f} ms, "
          f"{sum(own_seconds(a, cpu) > ANSWER_WITHIN_S for a in late)} of them without the CPU waits; readiness "
          f"{run.ready.status_code} in {run.ready_s * 1000:.0f} ms; breaker at SIGCONT {run.at_resume}, at the end "
          f"{run.at_end}; first 200 "
          f"{'never (Triton hung)' if first is None else f'{first.started + first.seconds - resumed:.2f}s'} "
          f"after resume; 200s from resume+{RECOVERED_WITHIN_S:.0f}s: {ok_share:.2%} of {len(recovered)}; "
          f"RSS {before_freeze[-1][1]:.0f} MiB before the freeze, growth {rss_growth:.1f} MiB; connections to "
          f"Triton before the freeze {sorted({s[2] for s in before_freeze})}, from the freeze on "
          f"{sorted({s[2] for s in after})}")
    assert run.load.failures == []
    assert {a.status for a in answers} <= {200, 429, 503, 504}, status_summary([a for a in answers if a.status != 200])
    errors = [a for a in answers if a.status != 200]
    assert all(a.retry_after == "1" for a in errors), {a.body for a in errors}
    assert all("Triton" in a.body for a in errors if a.status != 429), {a.body for a in errors}
    assert sum(a.status == 429 for a in answers) <= 0.02 * len(answers), status_summary(errors)
    too_slow = _answer_times(answers, cpu, within_s=ANSWER_WITHIN_S, share=0.99,
                             at_most_s=BACKEND_TIMEOUT_S + SLACK_S)
    # The breaker took the freeze: it opened, turned most requests away at once, and probed.
    assert run.at_resume.opened >= 1, run.at_resume
    assert len(turned_away) >= 0.8 * len(during), status_summary(during)
    assert run.at_resume.probes_with("failed") >= 2, run.at_resume   # a probe every cooldown + deadline, all failed
    assert "circuit breaker closed -> open" in log and "circuit breaker half_open -> open" in log, gateway.tail()
    assert run.ready_s <= BACKEND_TIMEOUT_S + SLACK_S, run.ready_s
    assert run.ready.status_code == 503 and "circuit breaker" in run.ready.json()["reason"], run.ready.text
    assert run.ready.json()["breaker"] in ("open", "half_open"), run.ready.text
    assert alive and gateway.process.pid == pid                               # never restarted
    # No unbounded queue and no connection left behind by a timed-out call: memory stays flat and
    # the gateway holds one gRPC connection (metadata and health, and every call over gRPC) plus,
    # over HTTP, at most one connection per call in flight, which the concurrency limit bounds.
    assert rss_growth < 50, rss_growth
    assert most_connections <= MAX_INFLIGHT + 1, most_connections
    if first is None:
        _hung(private_triton)
    assert first.started + first.seconds - resumed <= RECOVERED_WITHIN_S
    assert run.at_end.closed > run.at_resume.closed and run.at_end.probes_with("ok") >= 1, run.at_end
    assert "circuit breaker half_open -> closed" in log, gateway.tail()
    assert len(recovered) >= OBSERVED_AFTER_S * run.load.rate / 2 and ok_share >= 0.99, status_summary(recovered)
    judge_answer_times(too_slow, run.load)


def test_frozen_triton_with_the_fallback_configured_is_served_from_onnxruntime(
        private_triton: TritonServer, kafka_bootstrap: str, redis_url: str, freezer: list[Frozen],
        tmp_path: Path) -> None:
    """G3 with ``INFERENCE_FALLBACK=onnxruntime``: calls without an answer and the open breaker go to the fallback.

    Pass: every answer is 200 (at most 2% shed with 429), 99% within the deadline + 1 s less the
    CPU waits (a request that waited out the deadline is answered by the fallback); during the
    freeze answers come from onnxruntime and readiness stays 200 saying so and naming the
    breaker; after ``SIGCONT`` Triton answers again within 5 s.
    """
    repo = tmp_path / "repo"
    write_registry_model(repo, MODEL, all_versions())
    add_model(private_triton, repo, MODEL)
    gateway = _gateway(private_triton, kafka_bootstrap, redis_url, repo, tmp_path, fallback="onnxruntime")
    gateway.start()
    url = f"http://127.0.0.1:{port_of(gateway)}"
    try:
        r = httpx.put(f"{url}/v1/rollout/{MODEL}", json={"alias": "champion", "version": 1, "reason": "test"},
                      timeout=30)
        assert r.status_code == 200, r.text
        run = _freeze_under_load(private_triton, gateway, url, freezer, lambda a: a.backend == "triton")
    finally:
        for f in freezer:
            f.resume()
        gateway.stop()

    triton, resumed, back, cpu = run.triton, run.resumed, run.first, run.cpu
    answers = run.load.answers
    during = [a for a in answers if triton.stopped_at + 1.0 <= a.started < resumed]
    print(f"answers={len(answers)} (client skipped {run.load.skipped} slots), "
          f"{sum(own_seconds(a, cpu) <= ANSWER_WITHIN_S for a in answers) / len(answers):.2%} within "
          f"{ANSWER_WITHIN_S * 1000:.0f} ms less the CPU waits; during the freeze={len(during)} "
          f"backends during={sorted({str(a.backend) for a in during})} latency {_latencies(answers, cpu)}; "
          f"breaker at SIGCONT {run.at_resume}; Triton again "
          f"{'never (hung)' if back is None else f'{back.started + back.seconds - resumed:.2f}s'} after resume")
    assert run.load.failures == []
    assert {a.status for a in answers} <= {200, 429}, status_summary([a for a in answers if a.status != 200])
    shed = [a for a in answers if a.status == 429]
    assert all(a.retry_after == "1" for a in shed) and len(shed) <= 0.02 * len(answers), status_summary(shed)
    # The fallback runs the model in the gateway's worker threads, whose waits for a CPU are not
    # subtracted: on two busy cores only the deadline + 1 s holds (for 99%; the 350 ms share is printed).
    too_slow = _answer_times(answers, cpu, within_s=BACKEND_TIMEOUT_S + SLACK_S, share=0.99, at_most_s=float("inf"))
    # The fallback took the freeze (a probe every cooldown still waits out the deadline on Triton first).
    assert during and sum(a.backend == "onnxruntime" for a in during) >= 0.95 * len(during), \
        {b: sum(a.backend == b for a in during) for b in {a.backend for a in during}}
    assert run.at_resume.opened >= 1 and run.at_resume.probes_with("failed") >= 2, run.at_resume
    assert run.ready.status_code == 200 and "fallback" in run.ready.json()["reason"], run.ready.text
    assert "circuit breaker" in run.ready.json()["reason"], run.ready.text
    if back is None:
        _hung(private_triton)
    assert back.started + back.seconds - resumed <= RECOVERED_WITHIN_S
    judge_answer_times(too_slow, run.load)
