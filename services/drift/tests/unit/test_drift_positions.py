"""Input positions: records applied once each, in offset order, whatever faust skipped or acked."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from drift.errors import ReferenceUnavailable
from drift.monitor import MonitorConfig, Observation
from drift.positions import Admission, Positions
from drift.reference import VersionInfo
from drift.service import DriftService
from prometheus_client import REGISTRY

APPLY, ALREADY, AWAITING = Admission.APPLY, Admission.ALREADY_APPLIED, Admission.AWAITING_REFETCH
T = "ingest.feature-event.v1"
COMPACTED = "dataset.spec-registered.v1"


class Seeks:
    """Records the refetches asked for (the consumer's seek in the stream)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    async def __call__(self, topic: str, partition: int, offset: int) -> None:
        self.calls.append((topic, partition, offset))


class Holes:
    """Records the holes the consumer is told it will never see delivered (its commits pass them)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int, int]] = []

    async def __call__(self, topic: str, partition: int, first: int, last: int) -> None:
        self.calls.append((topic, partition, first, last))


def positions(store: dict[str, Any] | None = None, holes: Holes | None = None,
              **kwargs: Any) -> tuple[Positions, Seeks, dict[str, Any]]:
    seeks = Seeks()
    state = {} if store is None else store
    return Positions(state, refetch=seeks, contiguous={T}, skip_over=holes, **kwargs), seeks, state


async def feed(p: Positions, offsets: list[int], *, topic: str = T, partition: int = 0) -> list[tuple[int, Admission]]:
    """Admit each offset in turn, marking the admitted ones applied, like the stream's agent."""
    out = []
    for offset in offsets:
        admission = await p.admit(topic, partition, offset)
        if admission is APPLY:
            p.applied(topic, partition, offset)
        out.append((offset, admission))
    return out


def gaps(topic: str = T) -> float:
    return REGISTRY.get_sample_value("drift_input_gaps_total", {"topic": topic}) or 0.0


async def test_records_in_order_are_applied_and_the_position_is_kept_in_the_state() -> None:
    p, seeks, state = positions()
    assert await feed(p, [7, 8, 9]) == [(7, APPLY), (8, APPLY), (9, APPLY)]
    assert state == {"pos/ingest.feature-event.v1/0": 10}
    assert seeks.calls == []


async def test_a_redelivered_record_is_already_applied_and_nothing_moves() -> None:
    p, seeks, state = positions({"pos/ingest.feature-event.v1/0": 10})
    assert await feed(p, [8, 9, 10]) == [(8, ALREADY), (9, ALREADY), (10, APPLY)]
    assert state["pos/ingest.feature-event.v1/0"] == 11 and seeks.calls == []


async def test_records_skipped_upstream_are_read_again_before_any_later_one_is_applied() -> None:
    # faust acked 12..14 without delivering them: 15 shows the hole; the stale 16, 17 were fetched
    # before the seek, then the refetch brings 12.. in order.
    holes = Holes()
    p, seeks, state = positions({"pos/ingest.feature-event.v1/0": 12}, holes)
    result = await feed(p, [15, 16, 17, 12, 13, 14, 15, 16, 17, 18])
    assert result == [(15, AWAITING), (16, AWAITING), (17, AWAITING), (12, APPLY), (13, APPLY), (14, APPLY),
                      (15, APPLY), (16, APPLY), (17, APPLY), (18, APPLY)]
    assert seeks.calls == [(T, 0, 12)]     # one seek for the hole, not one per stale record
    assert state["pos/ingest.feature-event.v1/0"] == 19 and holes.calls == []


async def test_a_real_hole_is_accepted_when_the_refetch_comes_back_above_it_and_counted() -> None:
    # 12..14 do not exist any more (retention, transaction markers): the refetch from 12 starts at 15
    before = gaps()
    holes = Holes()
    p, seeks, _ = positions({"pos/ingest.feature-event.v1/0": 12}, holes)
    assert await feed(p, [15, 16, 15, 16, 17]) == [(15, AWAITING), (16, AWAITING), (15, APPLY), (16, APPLY),
                                                   (17, APPLY)]
    assert seeks.calls == [(T, 0, 12)]
    assert gaps() == before + 1
    assert holes.calls == [(T, 0, 12, 14)]


async def test_the_refetch_may_start_anywhere_in_the_hole() -> None:
    # 12 is gone, 13 is there: the refetch brings 13 (at or below the offset that showed the hole)
    p, _, _ = positions({"pos/ingest.feature-event.v1/0": 12})
    assert await feed(p, [20, 21, 13, 14]) == [(20, AWAITING), (21, AWAITING), (13, APPLY), (14, APPLY)]


async def test_partitions_are_independent() -> None:
    p, seeks, state = positions({"pos/ingest.feature-event.v1/0": 5, "pos/ingest.feature-event.v1/1": 5})
    assert await p.admit(T, 0, 9) is AWAITING
    assert await feed(p, [5, 6], partition=1) == [(5, APPLY), (6, APPLY)]
    assert seeks.calls == [(T, 0, 5)] and state["pos/ingest.feature-event.v1/1"] == 7


async def test_a_compacted_topic_has_holes_by_design_and_applies_what_comes() -> None:
    holes = Holes()
    p, seeks, _ = positions({f"pos/{COMPACTED}/0": 3}, holes)
    assert await feed(p, [9, 2, 10], topic=COMPACTED) == [(9, APPLY), (2, ALREADY), (10, APPLY)]
    assert seeks.calls == [] and holes.calls == [(COMPACTED, 0, 3, 8)]


async def test_without_a_position_the_consumer_start_is_where_records_must_begin() -> None:
    # a fresh group started at 40; faust skipped 40, 41 (acked while flow was suspended)
    p, seeks, state = positions()
    p.start_at(T, 0, 40)
    assert await feed(p, [42, 40, 41, 42]) == [(42, AWAITING), (40, APPLY), (41, APPLY), (42, APPLY)]
    assert seeks.calls == [(T, 0, 40)] and state["pos/ingest.feature-event.v1/0"] == 43


async def test_a_lost_seek_is_asked_for_again_and_a_hole_accepted_after_too_many_skipped() -> None:
    before = gaps()
    p, seeks, _ = positions({"pos/ingest.feature-event.v1/0": 0}, max_skipped=6, reseek_every=3)
    result = await feed(p, list(range(10, 18)))
    assert [a for _, a in result] == [AWAITING] * 7 + [APPLY]
    assert seeks.calls == [(T, 0, 0)] * 3      # the first, then every 3 skipped
    assert gaps() == before + 1


async def test_a_restart_resumes_from_the_position_in_the_restored_state() -> None:
    state: dict[str, Any] = {}
    first, _, _ = positions(state)
    await feed(first, [0, 1, 2])
    again, seeks, _ = positions(dict(state))       # the state as restored from the changelog
    assert await feed(again, [1, 2, 3]) == [(1, ALREADY), (2, ALREADY), (3, APPLY)]
    assert again.stored(T, 0) == 4 and seeks.calls == []


class NoReferences:
    async def version(self, model_name: str, version: int) -> VersionInfo:
        raise ReferenceUnavailable("not needed here")


class NoPublisher:
    async def report(self, report: Any) -> None:
        raise AssertionError("no window closes here")

    async def command(self, command: Any) -> None:
        raise AssertionError("no window closes here")


def test_a_monitor_built_during_recovery_is_rebuilt_once_the_state_is_complete() -> None:
    # A status request while the changelog is read builds the monitor from a prefix of the state;
    # the agents must go on from the whole state, not from that monitor.
    at = datetime(2026, 3, 1, tzinfo=UTC)
    complete: dict[str, Any] = {}
    writer = DriftService(MonitorConfig(window_size=10, window_step=10), complete, references=NoReferences(),
                          publisher=NoPublisher())
    for i in range(5):
        writer.monitor("d").observe(Observation({"x": float(i)}, at, T, 0, i, f"e{i}"))
        if i == 1:
            prefix = dict(complete)
    recovering: dict[str, Any] = dict(prefix)
    service = DriftService(MonitorConfig(window_size=10, window_step=10), recovering, references=NoReferences(),
                           publisher=NoPublisher())
    assert service.status()["datasets"][0]["events"] == 2
    recovering.update(complete)                      # the rest of the changelog
    service.forget_monitors()                        # the table's recovery completed
    assert service.status()["datasets"][0]["events"] == 5
    assert service.applied_through(T, 0) == 5                                   # where the stream goes on
    assert service.monitor("d").seq == 5


async def test_a_position_in_a_head_ahead_of_the_pos_key_covers_its_record() -> None:
    # kill -9 after a record's head (which holds its position) and before its pos/ key
    heads = {(T, 0): 9}
    p = Positions({"pos/ingest.feature-event.v1/0": 7}, refetch=Seeks(), contiguous={T},
                  recorded=lambda topic, partition: heads.get((topic, partition)))
    assert await feed(p, [7, 8, 9]) == [(7, ALREADY), (8, ALREADY), (9, APPLY)]
    assert p.stored(T, 0) == 10
