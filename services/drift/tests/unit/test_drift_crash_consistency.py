"""A crash at any point of the state's write sequence: the restarted service gives the windows,
numbering and reports of an uninterrupted run.

The stream's table is a changelog written in order but asynchronously, so ``kill -9`` leaves
*a prefix* of the writes. Here every write is recorded, the service is restored from every
prefix, and the input is delivered again from the start (the least favourable committed
offset) through the positions, as the stream's agents do; the reports the restored service
publishes, plus those the crashed one had marked as published, must be exactly the
uninterrupted run's, each with the same content. Predictions and labels likewise: from every
prefix, each counts exactly once (prediction window, joined errors, pending predictions).
"""

from __future__ import annotations

import copy
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from drift.monitor import DatasetMonitor, MonitorConfig
from drift.positions import Admission, Positions
from drift.service import DriftService, RecordPosition
from schemas.drift import DriftReportV1
from schemas.inference import PredictionEventV1
from schemas.ingest import FeatureEventV1, LabelEventV1
from schemas.training import RetrainCommandV1

T0 = datetime(2026, 4, 1, tzinfo=UTC)
MISSING = object()


class Changelog(dict[str, Any]):
    """A dict that records every write, in order, as a changelog topic would hold them."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[str, Any]] = []

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, copy.deepcopy(value))
        self.writes.append((key, copy.deepcopy(value)))

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self.writes.append((key, MISSING))

    def pop(self, key: str, default: Any = None) -> Any:
        if key in self:
            value = self[key]
            del self[key]
            return value
        return default


def restored(writes: list[tuple[str, Any]]) -> dict[str, Any]:
    """The table a restart recovers from a prefix of the changelog."""
    table: dict[str, Any] = {}
    for key, value in writes:
        if value is MISSING:
            table.pop(key, None)
        else:
            table[key] = copy.deepcopy(value)
    return table


class Collect:
    def __init__(self) -> None:
        self.reports: list[DriftReportV1] = []
        self.commands: list[RetrainCommandV1] = []

    async def report(self, report: DriftReportV1) -> None:
        self.reports.append(report)

    async def command(self, command: RetrainCommandV1) -> None:
        self.commands.append(command)


class NoRegistry:
    async def version(self, model_name: str, version: int) -> Any:
        raise AssertionError("not used")


def stream(n: int) -> list[tuple[FeatureEventV1, RecordPosition]]:
    """``n`` events over two partitions, the numeric feature shifting after a third, one event resent."""
    rng = np.random.default_rng(3)
    out = []
    offsets = [0, 0]
    for i in range(n):
        x = float(rng.normal(0.0 if i < n // 3 else 2.0))
        e = FeatureEventV1(event_id=f"e{i}", dataset="ds", entity_id=f"k{i % 2}", event_time=T0 + timedelta(seconds=i),
                           features={"x": x, "c": str(rng.choice(["a", "b"]))})
        copies = 2 if i % 11 == 4 else 1          # a producer resending: same id, next offset
        for _ in range(copies):
            p = i % 2
            out.append((e, RecordPosition("features", p, offsets[p])))
            offsets[p] += 1
    return out


CONFIG = MonitorConfig(window_size=12, window_step=5, min_samples=5)


async def no_refetch(topic: str, partition: int, offset: int) -> None:
    raise AssertionError("offsets are contiguous here")


Input = FeatureEventV1 | PredictionEventV1 | LabelEventV1


async def deliver(service: DriftService, store: dict[str, Any], records: list[tuple[Input, RecordPosition]],
                  *, heads_hold_positions: bool = True) -> None:
    """Each record as the stream's agent gives it: admitted by the positions, handled, marked applied.

    ``heads_hold_positions=False`` reads the ``pos/`` keys only (the design before positions
    travelled in the heads), to show what the heads are for.
    """
    positions = Positions(store, refetch=no_refetch, contiguous={"features", "preds", "labels"},
                          recorded=service.applied_through if heads_hold_positions else None)
    for event, at in records:
        if await positions.admit(at.topic, at.partition, at.offset) is not Admission.APPLY:
            continue
        if isinstance(event, FeatureEventV1):
            await service.on_features(event, at)
        elif isinstance(event, PredictionEventV1):
            service.on_prediction(event, at)
        else:
            service.on_label(event, at)
        positions.applied(at.topic, at.partition, at.offset)


async def run(store: dict[str, Any], records: list[tuple[FeatureEventV1, RecordPosition]]) -> Collect:
    out = Collect()
    await deliver(DriftService(CONFIG, store, references=NoRegistry(), publisher=out), store, list(records))
    return out


async def test_a_restart_from_any_prefix_of_the_state_writes_gives_the_uninterrupted_windows(
        caplog: pytest.LogCaptureFixture) -> None:
    records = stream(70)
    log = Changelog()
    first = await run(log, records)
    expected = {r.report_id: r for r in first.reports}
    assert list(expected) == [f"ds-w{i}" for i in range((70 - 12) // 5 + 1)]
    assert any(r.retrain_requested for r in first.reports)     # the shift is found: commands are covered too
    final = DatasetMonitor("ds", CONFIG, restored(log.writes))
    for cut in range(len(log.writes) + 1):
        table = restored(log.writes[:cut])
        acknowledged = DatasetMonitor("ds", CONFIG, table).published if "head/ds" in table else 0
        again = await run(table, records)          # redelivered from the start: nothing was committed
        seen = {f"ds-w{i}" for i in range(acknowledged)}
        for report in again.reports:
            assert report == expected[report.report_id], f"cut {cut}: {report.report_id} differs"
            seen.add(report.report_id)
        assert seen == set(expected), f"cut {cut}: windows {sorted(set(expected) - seen)} never published"
        assert len(again.reports) == len(set(r.report_id for r in again.reports)), f"cut {cut}: a window twice"
        m = DatasetMonitor("ds", CONFIG, table)
        assert (m.seq, m.windows, m.published, m.applied) == (
            final.seq, final.windows, final.published, final.applied), f"cut {cut}"
        assert [e.event_id for e in m._events] == [e.event_id for e in final._events], f"cut {cut}"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a restore found an inconsistent slot"


def labelled(n: int) -> list[tuple[Input, RecordPosition]]:
    """Champion predictions of ``n`` entities, each label two predictions later; every fourth unlabelled."""
    preds: list[tuple[Input, RecordPosition]] = []
    labels: list[tuple[Input, RecordPosition]] = []
    for i in range(n):
        preds.append((PredictionEventV1(request_id=f"r{i}", model_name="m", model_version=1, route="champion",
                                        dataset="ds", entity_id=f"k{i}", outputs={}, prediction=float(i % 3),
                                        latency_ms=1.0, served_at=T0 + timedelta(seconds=i)),
                      RecordPosition("preds", 0, i)))
        if i % 4 != 3:
            labels.append((LabelEventV1(event_id=f"l{i}", dataset="ds", entity_id=f"k{i}",
                                        event_time=T0 + timedelta(seconds=i), label=i % 2),
                           RecordPosition("labels", 0, len(labels))))
    out: list[tuple[Input, RecordPosition]] = []
    for i, p in enumerate(preds):
        out.append(p)
        while labels and int(labels[0][0].entity_id[1:]) < i - 1:   # a label two predictions later
            out.append(labels.pop(0))
    return out + labels


def counted(table: dict[str, Any]) -> tuple[Any, ...]:
    """What the predictions and labels left: the prediction window, joined errors, what still waits."""
    m = DatasetMonitor("ds", CONFIG, table)
    errors = m._erring.load(0, m.eseq)
    waiting = sorted(k for k, v in table.items() if k.startswith("pred/") and "joined" not in v)
    return m.pseq, list(m._predictions), m.eseq, errors, m.window_errors, waiting


async def test_predictions_and_labels_count_once_from_any_prefix_of_the_state_writes() -> None:
    records = labelled(24)
    log = Changelog()
    await deliver(DriftService(CONFIG, log, references=NoRegistry(), publisher=Collect()), log, records)
    expected = counted(restored(log.writes))
    assert expected[0] == 24 and expected[2] == 18 and len(expected[5]) == 6
    for cut in range(len(log.writes) + 1):
        table = restored(log.writes[:cut])
        await deliver(DriftService(CONFIG, table, references=NoRegistry(), publisher=Collect()), table, records)
        assert counted(table) == expected, f"cut {cut}"


async def test_a_prediction_redelivered_after_its_state_was_written_counts_once() -> None:
    # kill -9 after the prediction's state (its head) reached the changelog, before its pos/ key.
    [record] = labelled(1)[:1]
    log = Changelog()
    await deliver(DriftService(CONFIG, log, references=NoRegistry(), publisher=Collect()), log, [record])
    assert [k for k, _ in log.writes][-1] == "pos/preds/0"
    for heads_hold_positions, pseq in ((True, 1), (False, 2)):
        table = restored(log.writes[:-1])
        service = DriftService(CONFIG, table, references=NoRegistry(), publisher=Collect())
        await deliver(service, table, [record], heads_hold_positions=heads_hold_positions)   # redelivered
        assert service.monitor("ds").pseq == pseq   # 2: what the pos/ key alone allowed


async def test_a_label_first_after_a_restart_joins_a_prediction_whose_head_was_lost_once() -> None:
    # kill -9 after the prediction's pending entry, before its head; after the restart its label
    # (another topic) comes before the prediction's redelivery, then a second label of the entity.
    prediction, label = labelled(3)[0], labelled(3)[3]
    assert isinstance(label[0], LabelEventV1) and label[0].entity_id == "k0"
    second = (label[0].model_copy(update={"event_id": "l0-again"}), RecordPosition("labels", 0, 1))
    log = Changelog()
    await deliver(DriftService(CONFIG, log, references=NoRegistry(), publisher=Collect()), log, [prediction])
    cut = [k for k, _ in log.writes].index("pred/ds/k0") + 1
    uninterrupted: dict[str, Any] = {}
    await deliver(DriftService(CONFIG, uninterrupted, references=NoRegistry(), publisher=Collect()), uninterrupted,
                  [prediction, label, second])
    table = restored(log.writes[:cut])
    await deliver(DriftService(CONFIG, table, references=NoRegistry(), publisher=Collect()), table,
                  [label, prediction, second])
    assert counted(table)[:4] == counted(uninterrupted)[:4]
    assert counted(table)[2] == 1 and counted(table)[5] == []


async def test_state_in_the_layout_of_earlier_versions_is_restored_and_rewritten() -> None:
    records = stream(70)
    expected = (await run({}, records)).reports
    table: dict[str, Any] = {}
    half = await run(table, records[:40])
    m = DatasetMonitor("ds", CONFIG, table)
    n = CONFIG.window_size
    # The earlier layout: untagged values in window_size slots, one reference key, no layout in the head.
    current = ("window", "preds", "errors", "ref")
    legacy: dict[str, Any] = {k: v for k, v in table.items() if k.split("/")[0] not in current}
    for i in range(max(0, m.seq - n), m.seq):
        legacy[f"ring/ds/{i % n}"] = table[f"window/ds/{n + 1}/{i % (n + 1)}"][1]
    legacy["ref/ds"] = {k: v for k, v in table[f"ref/ds/{m.ref_gen % 2}"].items() if k != "gen"}
    legacy["head/ds"] = {k: v for k, v in table["head/ds"].items() if k not in ("slots", "ref_gen", "published")}
    rest = await run(legacy, records)
    assert half.reports + rest.reports == expected
    assert not [k for k in legacy if k.startswith("ring/")]
    assert legacy["head/ds"]["slots"]["window"] == n + 1


@pytest.mark.parametrize("ring", ["window", "preds"])
async def test_a_ring_slot_with_another_sequence_number_is_not_taken_for_the_window(ring: str) -> None:
    log = Changelog()
    await run(log, stream(30))
    table = restored(log.writes)
    m = DatasetMonitor("ds", CONFIG, table)
    for v in range(3):
        m.observe_prediction(float(v))
    seq = (m.seq if ring == "window" else m.pseq) - 1
    slots = CONFIG.window_size + 1
    key = f"{ring}/ds/{slots}/{seq % slots}"
    table[key] = [seq + slots, table[key][1]]      # a slot written for a later number (ahead of the head)
    back = DatasetMonitor("ds", CONFIG, table)
    if ring == "window":
        assert [e.event_id for e in back._events] == [e.event_id for e in m._events][:-1]
    else:
        assert list(back._predictions) == [0.0, 1.0]
