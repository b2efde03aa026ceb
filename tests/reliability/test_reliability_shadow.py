"""G5, shadow isolation: a shadow version that fails every call, then answers 5 s late, costs the
callers nothing.

Setup (plan G5): an open-loop stream of 100 one-row requests a second to the gateway, champion v1;
shadow mirroring 100% of them to v2. The gateway's inference calls go over Triton's HTTP endpoint
through ``fault_proxy.py``, which makes v2 fail (HTTP 500 at once) or answer 5 s late (past the
gateway's 2 s backend deadline) while Triton and v1 stay healthy; the champion's calls take the
same path in every phase, so the comparison is fair. The shadow queue is 200 jobs (default 1,000)
so that the slow shadow overflows it within the phase.

Phases rotate three times so that each condition samples the same machine: shadow off (the
baseline), shadow on with v2 failing, shadow on with v2 5 s late; 8 s each.

Pass criteria (plan G5):
- no server error reaches a caller: every answer is 200 from the champion, or 429 with
  ``Retry-After`` from the gateway's own concurrency limit (a CPU-starved test bed), at most one
  point more often with the shadow on than off (judged with the latency, below);
- the callers' p99 with the failing and with the slow shadow is at most max(1.1x the p99 with the
  shadow off, that + 5 ms: the canary analysis' own noise allowance) (pooled over the three rounds
  of each condition), on the gateway's account: each
  answer's time less the CPU run-queue waits of the gateway's event loop and of the caller's
  meanwhile (as in ``test_reliability_freeze.py``; the mirroring's own work runs on the gateway's
  loop and stays counted, while other processes on the two shared cores, the fault proxy among
  them, no longer decide the figure: raw p99s of one condition moved 28-62 ms between runs); when
  the caller itself skipped more than a tenth of its send slots or the load average is above 2 per
  CPU (a CPU-starved test bed: a starved gateway also waits for the GIL, which the run-queue
  accounting does not see), that part is an expected failure with its figures, after every other
  check;
- the shadow calls did happen and failed (``inference_shadow_calls_total{outcome="error"}`` and the
  proxy's own count); the circuit breaker stayed closed (a shadow's failures are not Triton's);
- the shadow queue stays bounded: ``inference_shadow_queue`` never above its size, and every
  mirror job of an answer served with the shadow on was run or counted as dropped
  (``inference_shadow_dropped_total``): overflow is counted, not hidden;
- gateway RSS growth < 50 MB.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import httpx
import pytest

from services.inference.tests.integration.conftest import MODEL
from tests.fixtures.triton import TritonServer
from tests.reliability.paced_load import Answer, PacedLoad, judge_answer_times, own_seconds, status_summary
from tests.reliability.processes import CpuWait, Usage, metric_sum, metrics_of, proxied_gateway, set_rollout, wait_for

pytestmark = pytest.mark.integration

PHASE_S = 8.0
ROUNDS = 3
QUEUE_SIZE = 200
SHADOW = 2
DELAY_S = 5.0
P99_RATIO = 1.1
P99_SLACK_S = 0.005
"""Noise allowance of the p99 comparison, the canary analysis' own (``INFERENCE_CANARY_P99_SLACK_MS``)."""
STARVED_LOAD_PER_CPU = 2.0
"""Load average per CPU above which the bed counts as starved (as in ``test_reliability_canary_load.py``)."""
MIN_ANSWERS = 500
"""Answers per condition at least, for its p99 to mean something (2,400 are offered)."""


def _mirror_jobs(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    return (metric_sum(metrics, "inference_shadow_calls_total", kind="shadow")
            + metric_sum(metrics, "inference_shadow_dropped_total", kind="shadow"))


BACKEND_DEADLINE_S = 2.0
"""The gateway's deadline of a Triton call (``INFERENCE_BACKEND_TIMEOUT_S``, default): a mirror call to the
late shadow ends by then."""


def _settled(url: str, timeout_s: float = 30.0) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The gateway's metrics once its shadow queue is empty and the mirror calls in flight have ended.

    The queue's gauge drops to 0 when the workers take the last jobs, not when their calls end, and a
    call to the late shadow lasts the backend deadline: the count of mirror jobs must stay unchanged,
    with the queue empty, for longer than that.
    """
    deadline = time.monotonic() + timeout_s
    last = metrics_of(url)
    still_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = metrics_of(url)
        if metric_sum(now, "inference_shadow_queue") != 0 or _mirror_jobs(now) != _mirror_jobs(last):
            still_since = time.monotonic()
        elif time.monotonic() - still_since > BACKEND_DEADLINE_S + 1.0:
            return now
        last = now
    return last


def _p99(answers: list[Answer], cpu: CpuWait | None = None) -> float:
    """The answers' p99; with ``cpu``, on the gateway's account (less the CPU run-queue waits)."""
    return statistics.quantiles([a.seconds if cpu is None else own_seconds(a, cpu) for a in answers], n=100)[98]


def test_a_failing_then_slow_shadow_costs_the_callers_nothing(
        private_triton: TritonServer, fault_proxy: str, kafka_bootstrap: str, redis_url: str,
        tmp_path: Path) -> None:
    gateway, url = proxied_gateway(private_triton, fault_proxy, kafka_bootstrap, redis_url, tmp_path,
                                   versions=(1, SHADOW), INFERENCE_SHADOW_QUEUE_SIZE=str(QUEUE_SIZE))
    assert gateway.process is not None
    pid = gateway.process.pid

    def rollout(alias: str, version: int | None) -> None:
        set_rollout(url, MODEL, alias, version, reason="G5")

    def fault(mode: str) -> None:
        r = httpx.put(f"{fault_proxy}/__fault", json={"model": MODEL, "version": SHADOW, "mode": mode,
                                                      "delay_s": DELAY_S}, timeout=10)
        assert r.status_code == 200, r.text

    windows: dict[str, list[tuple[float, float]]] = {"off": [], "error": [], "slow": []}
    queue_seen: list[float] = []
    dropped_after_slow: list[float] = []
    usage = Usage(pid, ()).start()
    load = PacedLoad(url)
    cpu: CpuWait | None = None
    try:
        rollout("champion", 1)
        load.start()
        wait_for(lambda: load.native_id, "the load's event loop", 10)
        cpu = CpuWait([Path(f"/proc/{pid}/task/{pid}/schedstat"),
                       Path(f"/proc/{os.getpid()}/task/{load.native_id}/schedstat")]).start()
        time.sleep(2.0)  # connections opened, caches warm: not counted
        for _ in range(ROUNDS):
            for condition in ("off", "error", "slow"):
                if condition == "off":
                    rollout("shadow", None)
                    fault("none")
                else:
                    fault("error" if condition == "error" else "delay")
                    rollout("shadow", SHADOW)
                t0 = time.monotonic()
                while time.monotonic() < t0 + PHASE_S:
                    time.sleep(0.5)
                    queue_seen.append(metric_sum(metrics_of(url), "inference_shadow_queue"))
                windows[condition].append((t0, time.monotonic()))
                if condition == "slow":
                    so_far = metric_sum(metrics_of(url), "inference_shadow_dropped_total", kind="shadow")
                    dropped_after_slow.append(so_far)
        rollout("shadow", None)
        time.sleep(1.0)
    finally:
        load.stop()
        usage.stop()
        if cpu is not None:
            cpu.stop()
    end = _settled(url)
    taken = httpx.get(f"{fault_proxy}/__fault", timeout=10).json()["taken"]
    alive = gateway.process.poll() is None
    gateway.stop()

    def within(condition: str) -> list[Answer]:
        return [a for a in load.answers if any(t0 <= a.started < t1 for t0, t1 in windows[condition])]

    by = {c: within(c) for c in windows}
    assert cpu is not None
    raw99 = {c: _p99(a) for c, a in by.items()}
    p99 = {c: _p99(a, cpu) for c, a in by.items()}
    rss = [s[1] for s in usage.samples]
    shadow_errors = metric_sum(end, "inference_shadow_calls_total", kind="shadow", outcome="error")
    shadow_ok = metric_sum(end, "inference_shadow_calls_total", kind="shadow", outcome="ok")
    dropped = metric_sum(end, "inference_shadow_dropped_total", kind="shadow")
    print(f"answers {len(load.answers)} (client skipped {load.skipped} slots); per condition "
          + ", ".join(f"{c}: {len(a)} answers, p50 {statistics.median(x.seconds for x in a) * 1000:.1f} ms, "
                      f"p99 {raw99[c] * 1000:.1f} ms raw, {p99[c] * 1000:.1f} ms on the gateway's account"
                      for c, a in by.items())
          + f"; ratios error {p99['error'] / p99['off']:.2f}, slow {p99['slow'] / p99['off']:.2f}; "
          f"shadow calls ok {shadow_ok:.0f} error {shadow_errors:.0f}; proxy took {taken}; shadow queue max "
          f"{max(queue_seen):.0f}; dropped after each slow phase {dropped_after_slow}; 429s "
          f"{ {c: sum(x.status == 429 for x in a) for c, a in by.items()} }; RSS {rss[0]:.0f} -> "
          f"max {max(rss):.0f} MiB")

    assert load.failures == [], load.failures[:3]
    assert alive and gateway.process.pid == pid
    # No server error reached a caller, in any phase; every answer came from Triton (the champion).
    assert {a.status for a in load.answers} <= {200, 429}, status_summary([a for a in load.answers if a.status != 200])
    shed = [a for a in load.answers if a.status == 429]
    assert all(a.retry_after is not None and "in flight" in a.body for a in shed), status_summary(shed)
    assert {a.backend for a in load.answers if a.status == 200} == {"triton"}, {a.backend for a in load.answers}
    assert all(len(a) >= MIN_ANSWERS for a in by.values()), {c: len(a) for c, a in by.items()}
    # The fault took effect: the shadow was called and failed, fast and late.
    assert taken.get(f"{MODEL}/{SHADOW}:error", 0) > 0 and taken.get(f"{MODEL}/{SHADOW}:delay", 0) > 0, taken
    assert shadow_errors > 0, end
    assert metric_sum(end, "inference_breaker_transitions_total") == 0, "a shadow's failures opened Triton's breaker"
    # Bounded and nothing hidden: the queue never above its size, and every mirror job of an answer
    # served while the shadow was on was run (ok or error) or counted as dropped.
    assert max(queue_seen) <= QUEUE_SIZE, max(queue_seen)
    mirrored = sum(a.status == 200 for c in ("error", "slow") for a in by[c])
    accounted = shadow_ok + shadow_errors + dropped
    assert accounted >= mirrored, (f"{mirrored} answers were served with the shadow on, but only {accounted} "
                                   f"mirror jobs were run or counted as dropped")
    assert max(rss) - rss[0] < 50, (rss[0], max(rss))
    # The callers' tail latency is the shadow-off tail's, within the plan's 10% (judged last; an
    # expected failure with its figures when the caller itself could not keep its schedule).
    bound = max(P99_RATIO * p99["off"], p99["off"] + P99_SLACK_S)
    slower = [f"{c} p99 {p99[c] * 1000:.1f} ms > max({P99_RATIO} x off p99 {p99['off'] * 1000:.1f} ms, off + "
              f"{P99_SLACK_S * 1000:.0f} ms) on the gateway's account" for c in ("error", "slow") if p99[c] > bound]
    share = {c: sum(x.status == 429 for x in a) / len(a) for c, a in by.items()}
    slower += [f"{c}: {share[c]:.2%} shed with 429 against {share['off']:.2%} with the shadow off"
               for c in ("error", "slow") if share[c] > share["off"] + 0.01]
    load_average, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if slower and load_average > STARVED_LOAD_PER_CPU * cpus:
        pytest.xfail(f"the test bed is starved of CPU (load average {load_average:.1f} on {cpus} CPUs) and the answer "
                     f"times were not judged; {'; '.join(slower)}")
    judge_answer_times("; ".join(slower) or None, load)
