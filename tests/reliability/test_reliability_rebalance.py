"""K6 rebalance churn: a second drift worker joins and workers die by ``kill -9``, over and over,
while 100 feature events per second stream in; nothing is lost, reordered or counted twice.

The drift group is active/standby (``drift.assignor``): one member holds every partition, a
second one waits with an empty assignment and takes over when the active one dies. Each cycle
starts the missing worker, waits, ``kill -9`` the newcomer (the standby) or the old one (the
active), alternating, and waits again. After each cycle:

* every partition of the group's topics is assigned to exactly one member (the broker's view,
  ``describe_consumer_groups``), and the survivor is the active one;
* the committed offset advanced on every partition of the feature topic;
* the group's lag on it fell below 200 within 60 s of the kill.

At the end the surviving worker counted every event exactly once and the reports of this test's
drift (header ``drift-app-id``) are the windows ``w0 .. w(n-1)``, each published once or again
identically; their offset ranges tile each partition (every event in exactly one window, windows
in offset order per partition: per-key order).

CI runs 3 cycles of 12 s up / 20 s down; the plan's 5 cycles of 30 s + 30 s:
``TRIBUTARY_K6_FULL=1 .venv/bin/python -m pytest tests/reliability/test_reliability_rebalance.py``.
Workers use static membership (``DRIFT_GROUP_INSTANCE_ID``, one id per slot, a killed slot is
started again under its id) and an 8 s session: a killed member holds its place until its
session expires, so the takeover after killing the active worker takes about that long.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from drift.kafka import APP_ID_HEADER
from drift.stream import INPUT_TOPICS
from schemas.ingest import FeatureEventV1
from schemas.topics import CATALOGUE
from tributary_kit.admin import ensure_topics
from tributary_kit.codec import encode_event

from deploy.localstack import ServiceProcess
from schemas import topics
from tests.reliability.processes import Record, busiest_processes, drift_process, kill9, port_of, read_topic, wait_for

FULL = os.environ.get("TRIBUTARY_K6_FULL") == "1"
CYCLES, UP_S, DOWN_S = (5, 30.0, 30.0) if FULL else (3, 12.0, 20.0)

# about 3 min in CI after catching up with the session's topics; the plan's 5 x (start + 60 s) plus the drain
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500 if FULL else 900)]
RATE = 100.0
WINDOW = 100
KEYS = 30
SESSION_S = 8
LAG_LIMIT, LAG_WITHIN_S = 200, 60.0
CATCH_UP_S = 420.0
"""Longest wait for the first worker to catch up with what the session's input topics already hold."""
T0 = datetime(2026, 6, 1, tzinfo=UTC)


@dataclass
class Stream:
    """Feature events of one dataset at ``RATE`` per second, keyed by entity (every partition gets some)."""

    bootstrap: str
    dataset: str
    delivered: list[tuple[int, int, str, int]] = field(default_factory=list)
    """(partition, offset, key, sequence number) of every acknowledged record."""
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        producer = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True, "linger.ms": 5})
        began, i = time.monotonic(), 0
        while not self._stop.is_set():
            ahead = began + i / RATE - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)   # pacing: the offered rate
            key = f"e{i % KEYS}"
            event = FeatureEventV1(event_id=f"{self.dataset}-{i}", dataset=self.dataset, entity_id=key,
                                   event_time=T0 + timedelta(seconds=i), features={"seq": float(i), "x": float(i % 7)})

            def delivered(err: Any, msg: Any, key: str = key, seq: int = i) -> None:
                with self._lock:
                    if err is not None:
                        self.errors.append(str(err))
                    else:
                        self.delivered.append((msg.partition(), msg.offset(), key, seq))

            producer.produce(topics.FEATURES, key=key, on_delivery=delivered,
                             value=encode_event(event, event_id=uuid.uuid4().hex, source="k6", occurred_at=T0))
            producer.poll(0)
            i += 1
        if producer.flush(30) != 0:
            self.errors.append("records left unflushed")

    def start(self) -> Stream:
        self._thread = threading.Thread(target=self.run, name="k6-features", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
        assert not self.errors, self.errors[:5]

    def count(self) -> int:
        with self._lock:
            return len(self.delivered)


def role(process: ServiceProcess) -> str | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port_of(process)}/readyz", timeout=5).json().get("role")
    except (httpx.HTTPError, ValueError):
        return None


def events_counted(process: ServiceProcess, dataset: str) -> int:
    try:
        status = httpx.get(f"http://127.0.0.1:{port_of(process)}/v1/drift/status", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return -1
    return next((int(d["events"]) for d in status["datasets"] if d["dataset"] == dataset), 0)


def assignment(admin: AdminClient, group: str) -> tuple[str, dict[tuple[str, int], list[str]]]:
    """The group's state and, per assigned partition, the members (instance ids) holding it."""
    description = admin.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
    owners: dict[tuple[str, int], list[str]] = defaultdict(list)
    for member in description.members:
        for tp in member.assignment.topic_partitions:
            owners[(tp.topic, tp.partition)].append(member.group_instance_id or member.member_id)
    return str(description.state), dict(owners)


def committed(bootstrap: str, group: str, partitions: list[int]) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        found = consumer.committed([TopicPartition(topics.FEATURES, p) for p in partitions], timeout=15)
        return {tp.partition: tp.offset for tp in found}
    finally:
        consumer.close()


def lag(bootstrap: str, group: str, wanted: list[TopicPartition]) -> int:
    """Records of ``wanted`` after the group's committed offsets (none committed: from the low watermark)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        done = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(wanted, timeout=15)}
        total = 0
        for tp in wanted:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            total += high - max(done[(tp.topic, tp.partition)], low)
        return total
    finally:
        consumer.close()


def input_lag(admin: AdminClient, bootstrap: str, group: str) -> int:
    """:func:`lag` over every partition of every drift input topic."""
    return lag(bootstrap, group, [TopicPartition(name, p) for name in INPUT_TOPICS
                                  for p in admin.list_topics(name, timeout=10).topics[name].partitions])


def lag_by_partition(bootstrap: str, group: str, partitions: list[int]) -> dict[int, tuple[int, int]]:
    """(committed offset, end offset) of every feature partition."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"k6-lag-{uuid.uuid4()}"})
    try:
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topics.FEATURES, p), timeout=10)[1]
                for p in partitions}
    finally:
        consumer.close()
    done = committed(bootstrap, group, partitions)
    return {p: (done[p], ends[p]) for p in partitions}


def test_rebalance_churn_loses_reorders_and_duplicates_nothing(kafka_bootstrap: str, tmp_path: Path,
                                                               unique: str) -> None:
    began = time.monotonic()
    dataset, group = f"k6-{unique}", f"drift-k6-{unique}"
    ensure_topics(kafka_bootstrap, CATALOGUE.values(), timeout_s=60)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    partitions = sorted(admin.list_topics(topics.FEATURES, timeout=10).topics[topics.FEATURES].partitions)
    assert len(partitions) > 1
    feature_partitions = [TopicPartition(topics.FEATURES, p) for p in partitions]

    def worker(slot: str) -> ServiceProcess:
        return drift_process(kafka_bootstrap, tmp_path, group, DRIFT_WINDOW_SIZE=str(WINDOW),
                             DRIFT_SESSION_TIMEOUT_S=str(SESSION_S), DRIFT_GROUP_INSTANCE_ID=f"{group}-{slot}")

    slots = {"a": worker("a"), "b": worker("b")}
    running: list[str] = []     # oldest first
    stream = Stream(kafka_bootstrap, dataset)
    measures: list[str] = []
    try:
        slots["a"].start(180)
        running.append("a")
        wait_for(lambda: role(slots["a"]) == "active", "worker a active", 60)
        stream.start()
        wait_for(lambda: all(o >= 0 for o in committed(kafka_bootstrap, group, partitions).values()),
                 "first commits on every feature partition", 90)
        # The input topics are the session's: earlier tests' events are there too (in CI, tens of
        # thousands of prediction events from the gateway tests), and a new group reads them all first,
        # in the same process that reads the features. The plan's setup is a worker keeping up with the
        # stream, so the cycles start once it has caught up with every input topic (in CI the worker was
        # still busy with that backlog at the first kill: CPU 100%, feature lag 7,400).
        backlog, caught_up_from = input_lag(admin, kafka_bootstrap, group), time.monotonic()
        wait_for(lambda: input_lag(admin, kafka_bootstrap, group) < LAG_LIMIT,
                 lambda: f"worker a caught up with its input topics' backlog of {backlog} records (lag now "
                         f"{input_lag(admin, kafka_bootstrap, group)}; {busiest_processes()})", CATCH_UP_S,
                 every_s=1.0)
        measures.append(f"backlog {backlog} records on the input topics before the cycles, caught up in "
                        f"{time.monotonic() - caught_up_from:.0f}s")
        before = committed(kafka_bootstrap, group, partitions)
        for cycle in range(CYCLES):
            newcomer = "b" if "a" in running else "a"
            t = time.monotonic()
            slots[newcomer].start(180)
            running.append(newcomer)
            joined = time.monotonic() - t
            old = running[0]
            wait_for(lambda new=newcomer: role(slots[new]) == "standby", f"{newcomer} a standby", 60)
            assert role(slots[old]) == "active"
            time.sleep(UP_S)
            victim = newcomer if cycle % 2 == 0 else old   # the standby, then the active, alternating
            survivor = old if victim == newcomer else newcomer
            kill9(slots[victim])
            running.remove(victim)
            killed = time.monotonic()
            takeover = wait_for(lambda s=survivor: role(slots[s]) == "active" and time.monotonic(),
                                f"{survivor} active after {victim} was killed", LAG_WITHIN_S)
            lags: list[tuple[float, int]] = []   # (seconds after the kill, lag): how the survivor drains

            def drained_at(lags: list[tuple[float, int]] = lags, killed: float = killed) -> float | None:
                lags.append((time.monotonic() - killed, lag(kafka_bootstrap, group, feature_partitions)))
                return time.monotonic() if lags[-1][1] < LAG_LIMIT else None

            def stuck(c: int = cycle, s: str = survivor, lags: list[tuple[float, int]] = lags) -> str:
                return (f"lag < {LAG_LIMIT} after cycle {c} (committed, end: "
                        f"{lag_by_partition(kafka_bootstrap, group, partitions)}; lag by seconds after the kill: "
                        f"{_every_5s(lags)}; {busiest_processes()}); {s}'s log:\n{slots[s].tail(60)}")

            drained = wait_for(drained_at, stuck, LAG_WITHIN_S - (time.monotonic() - killed), every_s=0.5)
            time.sleep(max(0.0, DOWN_S - (time.monotonic() - killed)))

            # the broker's view: one member left, holding every partition of the group's topics once
            _, owners = wait_for(
                lambda: (lambda s, o: (s, o) if s.endswith("STABLE") and len({m for ms in o.values() for m in ms}) == 1
                         else None)(*assignment(admin, group)),
                f"the group stable with one member after cycle {cycle}", 30)
            assert all(len(members) == 1 for members in owners.values()), owners
            assert {(topics.FEATURES, p) for p in partitions} <= set(owners), owners
            assert {m for ms in owners.values() for m in ms} == {f"{group}-{survivor}"}
            assert role(slots[survivor]) == "active"
            after = committed(kafka_bootstrap, group, partitions)
            assert all(after[p] > before[p] for p in partitions), (cycle, before, after)
            before = after
            measures.append(f"cycle {cycle}: joined {joined:.1f}s, killed {victim} "
                            f"({'active' if victim == old else 'standby'}), {survivor} active after "
                            f"{takeover - killed:.1f}s, lag < {LAG_LIMIT} after {drained - killed:.1f}s (peak "
                            f"{max(v for _, v in lags)}: {_every_5s(lags)})")
        stream.stop()
        total = stream.count()
        (last,) = running
        wait_for(lambda: events_counted(slots[last], dataset) >= total,
                 lambda: f"{total} events counted (at {events_counted(slots[last], dataset)})", 120)
        time.sleep(1.0)
        assert events_counted(slots[last], dataset) == total      # each event once: L = 0, D_fx = 0

        windows = total // WINDOW
        reports = wait_for(lambda: (lambda r: r if len({x.value["payload"]["report_id"] for x in r}) >= windows
                                    else None)(this_drift_reports(kafka_bootstrap, dataset, group)),
                           f"{windows} reports", 60, every_s=1.0)
        check_reports(reports, stream.delivered, windows)
        print(f"K6 {CYCLES} cycles, {total} events, {windows} windows, {time.monotonic() - began:.0f}s:\n  "
              + "\n  ".join(measures))
    finally:
        stream._stop.set()
        for process in slots.values():
            process.stop()


def _every_5s(lags: list[tuple[float, int]]) -> str:
    """One (seconds, lag) sample per 5 s, and the last."""
    kept, next_at = [], 0.0
    for at, value in lags:
        if at >= next_at:
            kept.append(f"{at:.0f}s {value}")
            next_at = at + 5.0
    if lags:
        kept.append(f"{lags[-1][0]:.0f}s {lags[-1][1]}")
    return ", ".join(kept)


def this_drift_reports(bootstrap: str, dataset: str, group: str) -> list[Record]:
    return read_topic(bootstrap, topics.DRIFT_REPORTS,
                      match=lambda r: r.key == dataset and r.headers.get(APP_ID_HEADER) == group.encode())


def check_reports(reports: list[Record], delivered: list[tuple[int, int, str, int]], windows: int) -> None:
    """Windows w0..w(n-1), duplicates identical; their ranges tile each partition in window order."""
    by_id: dict[str, dict[str, Any]] = {}
    for record in reports:
        payload = record.value["payload"]
        first = by_id.setdefault(payload["report_id"], payload)
        assert _same(first, payload), f"{payload['report_id']} published twice, differently"
    dataset = next(iter(by_id.values()))["dataset"]
    assert sorted(by_id, key=lambda i: int(i.rsplit("-w", 1)[1])) == [f"{dataset}-w{n}" for n in range(windows)]
    ranges: dict[int, list[tuple[int, int, int]]] = defaultdict(list)   # partition -> (start, end, window)
    for n in range(windows):
        report = by_id[f"{dataset}-w{n}"]
        for r in report["offsets"]:
            assert r["topic"] == topics.FEATURES
            ranges[r["partition"]].append((r["start_offset"], r["end_offset"], n))
    window_of: dict[tuple[int, int], int] = {}
    for partition, spans in ranges.items():
        spans.sort()
        for (_, end, n), (start, _, m) in itertools.pairwise(spans):
            assert end <= start and n < m, f"partition {partition}: windows {n} and {m} overlap or are out of order"
        for start, end, n in spans:
            for offset in range(start, end):
                window_of[(partition, offset)] = n
    ours = sorted(delivered, key=lambda d: d[3])
    counted = [window_of.get((p, o)) for p, o, _, _ in ours]
    assert sum(c is not None for c in counted) == windows * WINDOW, "events in windows"
    per_window = defaultdict(int)
    last_of_key: dict[str, int] = {}
    for (_, _, key, seq), n in zip(ours, counted, strict=True):
        if n is None:
            continue
        per_window[n] += 1
        assert last_of_key.get(key, -1) <= n, f"key {key}: event {seq} in window {n} after a later window"
        last_of_key[key] = n
    assert all(per_window[n] == WINDOW for n in range(windows)), dict(per_window)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
