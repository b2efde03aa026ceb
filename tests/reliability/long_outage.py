"""K7: a broker outage longer than the drift consumer's session, then recovery (no zombie consumer).

Drift consumes features fed through ingest at a steady rate; the broker is frozen (``SIGSTOP``)
or killed (``kill -9``, then restarted on the same log) for longer than drift's session timeout.
Pass (reliability plan K7): within 120 s of the broker's return drift's committed offsets advance
and its lag drains to zero, or its health check fails within 120 s and a supervisor restart brings
consumption back within a further 60 s. Fail: lag above zero with static offsets while health
says 200 for more than 3 minutes (a silent zombie). Also: drift counts every acknowledged event
exactly once, and ingest never loses an acknowledged event.

The full scenario is a command (5-minute outage, drift's default 60 s session)::

    .venv/bin/python -m tests.reliability.long_outage --outage-s 300 --mode stop
    .venv/bin/python -m tests.reliability.long_outage --outage-s 300 --mode kill

``test_reliability_long_outage.py`` runs a short form in the suite (a 10 s session, a 30 s outage).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from confluent_kafka import Consumer, KafkaException, TopicPartition

from deploy.localstack import Broker
from schemas import topics
from tests.reliability.processes import (
    FeatureClient,
    drift_process,
    ingest_process,
    port_of,
    read_topic,
    register_dataset,
    restart,
)

RECOVERY_S = 120.0
"""Time the plan gives drift, after the broker's return, to consume again (or to say it cannot)."""
SUPERVISOR_S = 60.0
"""Time a supervisor restart has to bring consumption back after drift reported itself unhealthy."""


@dataclass
class Outcome:
    """What one run observed; ``passed`` says whether it met the plan's criteria."""

    mode: str
    outage_s: float
    acked: int = 0
    drift_counted: int = 0
    lost: int = 0
    resumed_after_s: float | None = None
    unhealthy_after_s: float | None = None
    restarted: bool = False
    final_lag: int = -1
    timeline: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (self.resumed_after_s is not None and self.lost == 0 and self.drift_counted == self.acked
                and self.final_lag == 0)


def _committed(bootstrap: str, group: str, topic: str, timeout_s: float = 60.0) -> tuple[int, int]:
    """(sum of the group's committed offsets, sum of end offsets) over ``topic``'s partitions.

    A broker just back may not lead its partitions yet: asking again until ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
        try:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            tps = [TopicPartition(topic, p) for p in partitions]
            committed = sum(max(tp.offset, 0) for tp in consumer.committed(tps, timeout=10))
            ends = sum(consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps)
            return committed, ends
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
        finally:
            consumer.close()


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _drift_events(port: int, dataset: str) -> int:
    try:
        status = httpx.get(f"http://127.0.0.1:{port}/v1/drift/status", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return -1
    return next((int(d["events"]) for d in status["datasets"] if d["dataset"] == dataset), 0)


def run(root: Path, *, outage_s: float, mode: str, session_timeout_s: float = 60.0, rate: float = 100.0,
        warmup_s: float = 20.0, tail_s: float = 30.0) -> Outcome:
    """One K7 run in ``root`` (a broker, ingest and drift of its own)."""
    outcome = Outcome(mode=mode, outage_s=outage_s)

    def note(text: str) -> None:
        outcome.timeline.append(f"{time.strftime('%H:%M:%S')} {text}")
        print(outcome.timeline[-1], flush=True)

    broker = Broker(root / "kafka")
    broker.start()
    dataset, app_id = f"outage-{uuid.uuid4().hex[:8]}", f"drift-outage-{uuid.uuid4().hex[:8]}"
    ingest = ingest_process(broker.bootstrap, root, INGEST_DELIVERY_TIMEOUT_S="5")
    drift = drift_process(broker.bootstrap, root, app_id, DRIFT_SESSION_TIMEOUT_S=str(session_timeout_s),
                          DRIFT_WINDOW_SIZE="100")
    client: FeatureClient | None = None
    try:
        ingest.start()
        drift.start()
        register_dataset(f"http://127.0.0.1:{port_of(ingest)}", dataset)
        total = int(rate * (warmup_s + outage_s + tail_s))
        client = FeatureClient(f"http://127.0.0.1:{port_of(ingest)}", dataset, batch=10, rate_per_s=rate,
                               retries=1_000_000).start(total)
        time.sleep(warmup_s)
        pid = int((broker.data_dir / "broker.pid").read_text())
        note(f"{client.count()} events acknowledged; broker {'frozen' if mode == 'stop' else 'killed'} "
             f"for {outage_s:.0f} s (drift session timeout {session_timeout_s:.0f} s)")
        os.kill(pid, signal.SIGSTOP if mode == "stop" else signal.SIGKILL)
        time.sleep(outage_s)
        if mode == "stop":
            os.kill(pid, signal.SIGCONT)
        else:
            broker.start()
        back = time.monotonic()
        committed_at_return, _ = _committed(broker.bootstrap, app_id, topics.FEATURES)
        note(f"broker back; drift's committed offsets sum to {committed_at_return}")

        drift_port = port_of(drift)
        while time.monotonic() - back < RECOVERY_S + SUPERVISOR_S:
            committed, ends = _committed(broker.bootstrap, app_id, topics.FEATURES)
            healthy = _healthy(drift_port)
            if committed > committed_at_return and outcome.resumed_after_s is None:
                outcome.resumed_after_s = time.monotonic() - back
                note(f"drift committed again after {outcome.resumed_after_s:.1f} s (lag {ends - committed})")
                break
            if not healthy and outcome.unhealthy_after_s is None:
                outcome.unhealthy_after_s = time.monotonic() - back
                note(f"drift reports itself unhealthy after {outcome.unhealthy_after_s:.1f} s: supervisor restart")
                drift.stop()
                restart(drift)
                outcome.restarted = True
            if time.monotonic() - back > RECOVERY_S and outcome.unhealthy_after_s is None:
                note(f"ZOMBIE: {RECOVERY_S:.0f} s after the broker's return drift says healthy, commits nothing, "
                     f"lag {ends - committed}")
                break
            time.sleep(2)

        client.join(outage_s + 600)
        outcome.acked = client.count()
        acked = set(client.acked)
        seen = {r.value["payload"]["event_id"] for r in read_topic(
            broker.bootstrap, topics.FEATURES, match=lambda r: r.value["payload"]["dataset"] == dataset)}
        outcome.lost = len(acked - seen)
        deadline = time.monotonic() + RECOVERY_S
        while _drift_events(drift_port, dataset) < outcome.acked and time.monotonic() < deadline:
            time.sleep(1)
        outcome.drift_counted = _drift_events(drift_port, dataset)
        committed, ends = _committed(broker.bootstrap, app_id, topics.FEATURES)
        while committed < ends and time.monotonic() < deadline:   # faust commits on its interval
            time.sleep(1)
            committed, ends = _committed(broker.bootstrap, app_id, topics.FEATURES)
        outcome.final_lag = ends - committed
        note(f"{outcome.acked} acknowledged, {outcome.lost} lost, drift counted {outcome.drift_counted}; "
             f"lag {outcome.final_lag}")
        return outcome
    finally:
        if client is not None:
            client._stop.set()
        ingest.stop()
        drift.stop()
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the scenario and print the verdict; exit 0 when it passed."""
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.long_outage", description=__doc__)
    parser.add_argument("--outage-s", type=float, default=300.0)
    parser.add_argument("--mode", choices=["stop", "kill"], default="stop")
    parser.add_argument("--session-timeout-s", type=float, default=60.0, help="drift's consumer session timeout")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="k7-") as tmp:
        outcome = run(Path(tmp), outage_s=args.outage_s, mode=args.mode, session_timeout_s=args.session_timeout_s)
    print(f"K7 {args.mode} {args.outage_s:.0f} s: {'PASSED' if outcome.passed else 'FAILED'} "
          f"(resumed after {outcome.resumed_after_s} s, restarted: {outcome.restarted}, lost {outcome.lost}, "
          f"acked {outcome.acked}, drift counted {outcome.drift_counted}, final lag {outcome.final_lag})")
    return 0 if outcome.passed else 1


if __name__ == "__main__":
    sys.exit(main())
