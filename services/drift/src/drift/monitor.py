"""The drift monitor of one dataset: count windows, run every test, correct, decide; no I/O.

The monitor's durable state lives in a ``MutableMapping`` given to it (a Faust table in the
stream, a dict in tests and replays), in small JSON entries so that each event changes only
two keys: its ring slot and the head ``head/<dataset>`` (counters, positions, policy). The
in-memory counters are derived from those entries and rebuilt from them after a restart, so a
restart in the middle of a window loses nothing.

Crash consistency: the table's changelog is written in order but asynchronously, so a process
killed with ``kill -9`` comes back with *a prefix* of its writes: possibly the ring slot of an
event without the head that counts it, or a window's entries without the head that closed it.
The head is therefore the commit point and everything written before it is either harmless
when the head is missing or ignored: a ring has one slot more than it must hold, so the slot an
event takes is never one the last persisted head still needs, and every slot carries its
sequence number so a restore takes only the slots the head covers; the reference is
double-buffered by generation and the head names the generation it uses; a closed window's
report is appended to the recent reports by id (idempotently). The head also carries the
position of every record that changed the dataset (last offset applied per input partition),
so a restore never has a record's effect without its position or the other way round: the
stream's positions (:mod:`drift.positions`) skip every record a head covers, and a record
whose head was lost is applied again exactly as the first time. A record
whose event id is already in the window (the same event published twice upstream: a producer
resending after a crash or a 503) is not counted, so each event counts once within the last
``window_size`` events. Reports are counted as published only when the publisher says so
(:meth:`DatasetMonitor.mark_published`); a window whose report was not acknowledged before a
crash is found by :meth:`DatasetMonitor.unpublished` and published again with the same id.

Windows are counted in feature events: the first window closes after ``window_size`` events,
then one every ``window_step`` events over the last ``window_size`` (``step == size`` is a
tumbling window, a smaller step a sliding one). Counters are updated lazily, once per
window, with the events that entered and left since the last one (vectorised), which is what
makes a window cost ``O(step + cells)`` instead of a fresh sort of both samples.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from schemas.dataset import DatasetSpec
from schemas.drift import DriftReportV1, DriftTest, FeatureDrift
from schemas.training import OffsetRange

from drift.detectors import Adwin, Detector, PageHinkley
from drift.policy import Correction, PolicyConfig, PolicyState, correct, decide, rearm
from drift.reference import (
    ERROR_RATE,
    PREDICTION,
    CategoricalReference,
    NumericReference,
    Reference,
    parse_reference,
    stats_from_sample,
)
from drift.stats import CategoryTable, TestResult, WindowCounter, ks_p_values, psi

log = logging.getLogger(__name__)

P_VALUE_TESTS: frozenset[str] = frozenset({"ks", "chi2", "prediction_ks"})
DEFAULT_RETRAIN_ON: frozenset[str] = frozenset(
    {"ks", "psi", "chi2", "js", "prediction_ks", "prediction_psi", "adwin", "page_hinkley"})
MAX_UNEXPECTED_REPORTED = 20

FeatureValue = float | int | str | None


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    """Window sizes, test thresholds and the retrain policy (from the service settings)."""

    window_size: int = 1000
    window_step: int = 1000
    min_samples: int = 30
    alpha: float = 0.05
    correction: Correction = "benjamini-hochberg"
    psi_threshold: float = 0.2
    psi_bins: int = 10
    js_threshold: float = 0.2
    new_category_threshold: float = 0.01
    missing_rate_tolerance: float = 0.05
    out_of_range_tolerance: float = 0.01
    adwin_delta: float = 0.002
    ph_threshold: float = 50.0
    ph_delta: float = 0.005
    ph_min_instances: int = 30
    error_memory: int = 10_000
    bootstrap_reference: bool = True
    retrain_on: frozenset[str] = DEFAULT_RETRAIN_ON
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    reports_kept: int = 50

    def __post_init__(self) -> None:
        if not 1 <= self.window_step <= self.window_size:
            raise ValueError(f"window_step must be in 1..window_size ({self.window_size}), got {self.window_step}")


@dataclass(frozen=True, slots=True)
class RecordPosition:
    """Where an input record was read (window offsets and the positions saved in the heads)."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Observation:
    """One feature event as the monitor needs it."""

    features: dict[str, FeatureValue]
    event_time: datetime
    topic: str
    partition: int
    offset: int
    event_id: str | None = None
    """The event's id, when known: duplicates of an event in the ring are not counted twice."""

    def to_json(self) -> list[Any]:
        """Compact form for a ring slot."""
        return [self.event_time.timestamp(), self.topic, self.partition, self.offset, self.features, self.event_id]

    @classmethod
    def from_json(cls, data: list[Any]) -> Observation:
        """Back from :meth:`to_json` (slots written before event ids were kept have five fields)."""
        return cls(data[4], datetime.fromtimestamp(data[0], UTC), data[1], data[2], data[3],
                   data[5] if len(data) > 5 else None)


@dataclass(frozen=True, slots=True)
class WindowOutcome:
    """A closed window: its report and whether the policy asks for a retrain."""

    report: DriftReportV1
    retrain: bool
    window_index: int


class _Numeric:
    __slots__ = ("bins", "ks", "ref")

    def __init__(self, ref: NumericReference) -> None:
        self.ref = ref
        self.ks: WindowCounter | None = ref.ks.counter() if ref.ks else None
        self.bins: WindowCounter | None = ref.bins.counter() if ref.bins else None


class _Ring:
    """A ring of values by sequence number in store keys, with one slot more than it must hold.

    The value for sequence number ``i`` is written (tagged ``[i, value]``) to slot
    ``i mod slots`` under ``<prefix>/<dataset>/<slots>/``. Holding ``capacity`` values in
    ``capacity + 1`` slots means writing number ``hi`` overwrites ``hi - capacity - 1``, which no
    head up to ``hi`` needs: a crash between the slot and the head that counts it leaves a state
    the restore reads correctly. A ring restored from another layout (the slot count changed,
    or the untagged ``capacity``-slot layout of earlier versions under ``legacy``) is rewritten
    into the new keys before its first write; the head then names the new layout.
    """

    __slots__ = ("_legacy", "_obsolete", "capacity", "layout", "migrating", "name", "prefix", "slots", "store")

    def __init__(self, store: MutableMapping[str, Any], name: str, dataset: str, capacity: int,
                 saved_slots: int | None, *, legacy: str) -> None:
        self.store = store
        self.name = name
        self.capacity = capacity
        self.slots = capacity + 1
        self.prefix = f"{name}/{dataset}/{self.slots}/"
        self._legacy = (f"{legacy}/{dataset}/", capacity) if saved_slots is None else (
            f"{name}/{dataset}/{saved_slots}/", saved_slots)
        self.migrating = saved_slots != self.slots
        self.layout: int | None = saved_slots if self.migrating else self.slots
        """Slot count of the keys in use, for the head (None: the untagged layout of earlier versions)."""
        self._obsolete: list[str] = []

    def load(self, lo: int, hi: int) -> list[Any]:
        """The values of sequence numbers ``lo .. hi-1`` (the last ``capacity`` at most) as persisted."""
        prefix, slots = self._legacy if self.migrating else (self.prefix, self.slots)
        tagged = prefix.startswith(f"{self.name}/")
        held = slots - 1 if tagged else slots
        values: list[Any] = []
        for i in range(max(0, lo, hi - min(held, self.capacity)), hi):
            raw = self.store.get(f"{prefix}{i % slots}")
            if raw is None:
                log.error("ring slot missing; the window goes on without it", extra={"ring": prefix, "seq": i})
            elif not tagged:
                values.append(raw)
            elif raw[0] == i:
                values.append(raw[1])
            else:
                log.error("ring slot holds another sequence number; the window goes on without it",
                          extra={"ring": prefix, "seq": i, "found": raw[0]})
        return values

    def put(self, seq: int, value: Any, *, held: Iterable[tuple[int, Any]] = ()) -> None:
        """Write the value of ``seq``; ``held`` (the values still in the window) first when migrating."""
        if self.migrating:
            for i, v in held:
                self.store[f"{self.prefix}{i % self.slots}"] = [i, v]
            prefix, slots = self._legacy
            self._obsolete = [f"{prefix}{j}" for j in range(slots)]
            self.migrating = False
            self.layout = self.slots
        self.store[f"{self.prefix}{seq % self.slots}"] = [seq, value]

    def drop_obsolete(self) -> None:
        """Delete the keys of the layout migrated from (after the head naming the new one is saved)."""
        for key in self._obsolete:
            self.store.pop(key, None)
        self._obsolete = []


class DatasetMonitor:
    """Windows, tests and policy of one dataset over a state mapping.

    Args:
        dataset: the dataset name.
        config: windows, thresholds, policy.
        store: where the durable state lives; read at construction (restore) and written on
            every change.
        spec: the dataset spec (feature types, bounds, required features), when known.

    """

    def __init__(self, dataset: str, config: MonitorConfig, store: MutableMapping[str, Any], *,
                 spec: DatasetSpec | None = None) -> None:
        self.dataset = dataset
        self.config = config
        self.store = store
        self.spec = spec
        self._head_key = f"head/{dataset}"
        head = store.get(self._head_key) or {}
        self.seq: int = head.get("seq", 0)
        self.pseq: int = head.get("pseq", 0)
        self.eseq: int = head.get("eseq", 0)
        self.e0: int = head.get("e0", 0)
        self.windows: int = head.get("windows", 0)
        self.published: int = head.get("published", self.windows)
        self.applied: dict[str, int] = dict(head.get("last", {}))
        """Last offset applied per input partition (``topic:partition``) among the records that
        changed this dataset's state. Saved in the head: a record's position is in the same
        changelog write as its effect (:meth:`applied_through`)."""
        self.flags: dict[str, bool] = dict(head.get("flags", {}))
        self.window_errors: list[float] = list(head.get("werr", [0.0, 0.0]))
        self.policy_state = PolicyState.from_dict(head.get("policy"))
        self.ref_gen: int = head.get("ref_gen", 0)
        self.reference = self._load_reference(head)
        n = config.window_size
        slots = head.get("slots", {}) if head else {}
        fresh = not head     # no state yet: start in the current layout
        self._ring = _Ring(store, "window", dataset, n, n + 1 if fresh else slots.get("window"), legacy="ring")
        self._pring = _Ring(store, "preds", dataset, n, n + 1 if fresh else slots.get("preds"), legacy="pring")
        self._erring = _Ring(store, "errors", dataset, config.error_memory,
                             config.error_memory + 1 if fresh else slots.get("errors"), legacy="erring")
        self._slots = {"window": self._ring.slots, "preds": self._pring.slots, "errors": self._erring.slots}
        self._migrating = any(r.migrating for r in (self._ring, self._pring, self._erring))
        self._events: deque[Observation] = deque(
            Observation.from_json(raw) for raw in self._ring.load(self.seq - n, self.seq))
        self._ids: Counter[str] = Counter(e.event_id for e in self._events if e.event_id is not None)
        # Per window: event times (for its bounds) and, per partition, the offsets in arrival
        # order, which is offset order (the positions apply a partition's records in order), so
        # a partition's range in the window is its first and last offset.
        self._times: deque[float] = deque(e.event_time.timestamp() for e in self._events)
        self._positions: dict[tuple[str, int], deque[int]] = {}
        for e in self._events:
            self._positions.setdefault((e.topic, e.partition), deque()).append(e.offset)
        self._predictions: deque[FeatureValue] = deque(self._pring.load(self.pseq - n, self.pseq), maxlen=n)
        self._detectors = self._new_detectors()
        for error in self._erring.load(max(self.e0, self.eseq - config.error_memory), self.eseq):
            for d in self._detectors:
                d.update(error)
        self._rebuild()

    def _load_reference(self, head: dict[str, Any]) -> Reference:
        """The reference of the head's generation (a newer one written before a crash is ignored)."""
        saved = (self.store.get(f"ref/{self.dataset}/{self.ref_gen % 2}") if "ref_gen" in head
                 else self.store.get(f"ref/{self.dataset}"))
        if saved and "ref_gen" in head and saved.get("gen") != self.ref_gen:
            log.error("reference slot holds another generation; no reference until the next one",
                      extra={"dataset": self.dataset, "gen": self.ref_gen, "found": saved.get("gen")})
            saved = None
        if not saved:
            return parse_reference(None)
        return parse_reference(saved.get("stats"), model_name=saved.get("model_name"), version=saved.get("version"),
                               source=saved.get("source", "registry"), psi_bins=self.config.psi_bins)

    # ---- inputs ---------------------------------------------------------------------------

    def observe(self, obs: Observation) -> WindowOutcome | None:
        """Count one feature event; returns the window's outcome when it closes one.

        Duplicates of an event still in the ring (same event id at another offset) are not
        counted. A record applied once is not given again: its position is saved in the head
        with its effect, and the stream's positions skip every record a head covers.
        """
        self.applied[f"{obs.topic}:{obs.partition}"] = obs.offset
        if obs.event_id is not None and obs.event_id in self._ids:
            self._save_head()   # the record's position is committed with the head all the same
            return None
        n = self.config.window_size
        raw = obs.to_json()
        if self._ring.migrating:
            self._ring.put(self.seq, raw, held=[(self.seq - len(self._events) + k, e.to_json())
                                               for k, e in enumerate(self._events)])
        else:
            self._ring.put(self.seq, raw)
        self.seq += 1
        self._events.append(obs)
        self._times.append(raw[0])
        self._positions.setdefault((obs.topic, obs.partition), deque()).append(obs.offset)
        self._added.append(obs)
        if obs.event_id is not None:
            self._ids[obs.event_id] += 1
        if len(self._events) > n:
            gone = self._events.popleft()
            self._times.popleft()
            self._positions[(gone.topic, gone.partition)].popleft()
            self._removed.append(gone)
            if gone.event_id is not None:
                self._ids[gone.event_id] -= 1
                if self._ids[gone.event_id] <= 0:
                    del self._ids[gone.event_id]
        outcome = None
        if self.seq >= n and (self.seq - n) % self.config.window_step == 0:
            outcome = self._close_window()
        self._save_head()
        return outcome

    def observe_prediction(self, value: FeatureValue, at: RecordPosition | None = None) -> None:
        """Count one champion prediction into the prediction window (read at ``at``, when known)."""
        if value is None:
            return
        if at is not None:
            self.applied[f"{at.topic}:{at.partition}"] = at.offset
        self._pring.put(self.pseq, value,
                        held=((self.pseq - len(self._predictions) + k, p) for k, p in enumerate(self._predictions)))
        self.pseq += 1
        self._predictions.append(value)
        self._save_head()

    def observe_error(self, error: float, at: RecordPosition | None = None) -> None:
        """Feed one joined prediction error (0/1 or absolute error) to the concept-drift detectors.

        ``at``: where the label was read; saved with the head like every record's position.
        """
        if at is not None:
            self.applied[f"{at.topic}:{at.partition}"] = at.offset
        if self._erring.migrating:
            start = max(self.e0, self.eseq - self.config.error_memory)
            held = list(zip(range(start, self.eseq), self._erring.load(start, self.eseq), strict=False))
        else:
            held = []
        self._erring.put(self.eseq, error, held=held)
        self.eseq += 1
        self.window_errors = [self.window_errors[0] + error, self.window_errors[1] + 1]
        for d in self._detectors:
            d.update(error)
            if d.drift_detected:
                self.flags[d.name] = True
        self._save_head()

    def set_reference(self, reference: Reference) -> None:
        """A new champion (or its statistics): rebuild the counters, reset the detectors, re-arm."""
        self._set_reference(reference)
        self._save_head()

    def _set_reference(self, reference: Reference) -> None:
        # The new generation goes to the other slot: until the head naming it is saved, a
        # restore still finds the current one.
        self.reference = reference
        self.ref_gen += 1
        self.store[f"ref/{self.dataset}/{self.ref_gen % 2}"] = {
            "gen": self.ref_gen, "model_name": reference.model_name, "version": reference.version,
            "source": reference.source, "stats": reference.raw}
        self.e0 = self.eseq
        self._detectors = self._new_detectors()
        self.flags = {}
        self.window_errors = [0.0, 0.0]
        rearm(self.policy_state)
        self._rebuild()

    def set_spec(self, spec: DatasetSpec) -> None:
        """A new dataset spec: types, bounds and required features change."""
        self.spec = spec
        self._rebuild()

    # ---- state ----------------------------------------------------------------------------

    def applied_through(self, topic: str, partition: int) -> int | None:
        """The partition's next offset after the records this dataset's head covers (None: none)."""
        last = self.applied.get(f"{topic}:{partition}")
        return None if last is None else last + 1

    @property
    def in_window(self) -> int:
        """Events counted towards the next window."""
        n, step = self.config.window_size, self.config.window_step
        return self.seq if self.seq < n else (self.seq - n) % step

    def unpublished(self) -> list[DriftReportV1]:
        """Reports of closed windows not yet acknowledged as published (a crash came in between), oldest first."""
        if self.published >= self.windows:
            return []
        wanted = {f"{self.dataset}-w{i}" for i in range(self.published, self.windows)}
        kept = [DriftReportV1.model_validate(r) for r in self.store.get(f"reports/{self.dataset}") or []
                if r["report_id"] in wanted]
        if len(kept) < len(wanted):
            log.error("reports of closed windows are no longer kept; they cannot be published again",
                      extra={"dataset": self.dataset, "missing": len(wanted) - len(kept)})
        return kept

    def mark_published(self, windows: int) -> None:
        """The reports of the first ``windows`` windows were acknowledged by the broker."""
        if windows > self.published:
            self.published = windows
            self._save_head()

    def _save_head(self) -> None:
        # The table serialises the value when it is written (the changelog record), so the
        # counters' own containers can go in as they are; an in-memory store sees them change
        # with the monitor, which is still the state of its last head.
        self.store[self._head_key] = {
            "seq": self.seq, "pseq": self.pseq, "eseq": self.eseq, "e0": self.e0, "windows": self.windows,
            "published": self.published, "last": self.applied, "flags": self.flags,
            "werr": self.window_errors, "policy": self.policy_state.to_dict(), "ref_gen": self.ref_gen,
            "slots": self._slots if not self._migrating else
            {r.name: r.layout for r in (self._ring, self._pring, self._erring) if r.layout is not None},
        }
        if self._migrating:
            for ring in (self._ring, self._pring, self._erring):
                ring.drop_obsolete()
            self._migrating = any(r.migrating for r in (self._ring, self._pring, self._erring))

    def _new_detectors(self) -> list[Detector]:
        c = self.config
        return [Adwin(delta=c.adwin_delta),
                PageHinkley(min_instances=c.ph_min_instances, delta=c.ph_delta, threshold=c.ph_threshold)]

    def _kind(self, name: str) -> str | None:
        if self.spec is not None:
            fs = self.spec.feature(name)
            if fs is not None:
                return fs.type
        ref = self.reference.features.get(name)
        if isinstance(ref, NumericReference):
            return "numeric"
        if isinstance(ref, CategoricalReference):
            return "categorical"
        return None

    def _expected(self) -> dict[str, bool]:
        """Features the window should carry, with whether each is required."""
        if self.spec is not None:
            return {f.name: f.required for f in self.spec.features}
        return dict.fromkeys(self.reference.features, True)

    def _bounds(self, name: str) -> tuple[float | None, float | None]:
        lo = hi = None
        if self.spec is not None and (fs := self.spec.feature(name)) is not None:
            lo, hi = fs.min, fs.max
        ref = self.reference.features.get(name)
        # A bootstrapped reference's range is one window's: too narrow to call values outside it wrong.
        if isinstance(ref, NumericReference) and self.reference.source == "registry":
            lo = ref.min if lo is None else lo
            hi = ref.max if hi is None else hi
        return lo, hi

    def _rebuild(self) -> None:
        self._numeric: dict[str, _Numeric] = {}
        self._categorical: dict[str, CategoryTable] = {}
        for name, ref in self.reference.features.items():
            if isinstance(ref, NumericReference) and self._kind(name) == "numeric":
                self._numeric[name] = _Numeric(ref)
            elif isinstance(ref, CategoricalReference) and self._kind(name) == "categorical":
                self._categorical[name] = CategoryTable(ref.frequencies, reference_count=ref.count)
        self._present: dict[str, int] = {}
        self._carried: dict[str, int] = {}
        self._out_of_range: dict[str, int] = {}
        self._bound_cache = {name: self._bounds(name) for name in self._expected() | dict.fromkeys(self._numeric)}
        self._added: list[Observation] = list(self._events)
        self._removed: list[Observation] = []

    def _flush(self) -> None:
        """Apply the events that entered and left the window since the last flush (vectorised).

        Works column by column (one list comprehension per feature, numpy for the numeric
        counts and bounds), which is what keeps the per-value cost far below a fresh test.
        """
        for sign, batch in ((1, self._added), (-1, self._removed)):
            if not batch:
                continue
            rows = [obs.features for obs in batch]
            carried = Counter(name for row in rows for name in row)
            for name, k in carried.items():
                self._carried[name] = self._carried.get(name, 0) + sign * k
            for name in carried:
                column = [row.get(name) for row in rows]
                # The common case, a column of numbers only, goes to numpy in one call; a column
                # with strings or missing values (numpy infers another dtype) is split first.
                values = np.array(column)
                if values.dtype.kind in "fiub":
                    values = values.astype(np.float64, copy=False)
                    self._present[name] = self._present.get(name, 0) + sign * len(column)
                else:
                    strings = [v for v in column if isinstance(v, str)]
                    numbers = [v for v in column if v is not None and not isinstance(v, str)]
                    self._present[name] = self._present.get(name, 0) + sign * (len(strings) + len(numbers))
                    table = self._categorical.get(name)
                    if table is not None:
                        for v in strings:
                            table.add(v, sign)
                    if not numbers:
                        continue
                    values = np.asarray(numbers, dtype=np.float64)
                lo, hi = self._bound_cache.get(name, (None, None))
                if lo is not None or hi is not None:
                    outside = (values < lo) if lo is not None else np.zeros(values.size, bool)
                    if hi is not None:
                        outside |= values > hi
                    self._out_of_range[name] = self._out_of_range.get(name, 0) + sign * int(outside.sum())
                acc = self._numeric.get(name)
                if acc is not None:
                    if acc.ks is not None:
                        acc.ks.add_many(values, sign)
                    if acc.bins is not None:
                        acc.bins.add_many(values, sign)
        self._added = []
        self._removed = []

    # ---- a window -------------------------------------------------------------------------

    def _close_window(self) -> WindowOutcome:
        c = self.config
        notes: list[str] = []
        if not self.reference.usable and c.bootstrap_reference:
            self._bootstrap()
            notes.append("reference bootstrapped from this window (no reference statistics from the registry)")
        self._flush()
        rows = self._distribution_rows() + self._quality_rows() + self._prediction_rows() + self._concept_rows()
        rows = self._corrected(rows)
        drifted_rows = [r for r in rows if r.drifted]
        drifted_features = sorted({r.feature for r in drifted_rows})
        retrain_drift = any(r.test in c.retrain_on for r in drifted_rows)
        times = np.fromiter(self._times, np.float64, len(self._times))
        end = self._events[int(times.argmax())].event_time
        decision = decide(self.policy_state, drifted=retrain_drift, at=end, config=c.policy)
        if not self.reference.usable:
            notes.append("no reference statistics: distribution tests skipped")
        notes.extend(self.reference.problems[:5])
        index = self.windows
        self.windows += 1
        self.flags = {}
        self.window_errors = [0.0, 0.0]
        report = DriftReportV1(
            report_id=f"{self.dataset}-w{index}",
            dataset=self.dataset,
            model_name=self.reference.model_name,
            model_version=self.reference.version,
            window_start=self._events[int(times.argmin())].event_time,
            window_end=end,
            offsets=[OffsetRange(topic=t, partition=p, start_offset=q[0], end_offset=q[-1] + 1)
                     for (t, p), q in sorted(self._positions.items()) if q],
            results=rows,
            correction=c.correction,
            drifted=bool(drifted_rows),
            drifted_features=drifted_features,
            retrain_requested=decision.retrain,
            decision="; ".join([decision.reason, *notes]),
        )
        # By id: a window closed again after a crash (its head was lost) replaces its first report.
        kept = [r for r in self.store.get(f"reports/{self.dataset}") or [] if r["report_id"] != report.report_id]
        self.store[f"reports/{self.dataset}"] = [*kept, report.model_dump(mode="json")][-c.reports_kept:]
        return WindowOutcome(report, decision.retrain, index)

    def _bootstrap(self) -> None:
        numeric: dict[str, list[float]] = {}
        categorical: dict[str, list[str]] = {}
        for obs in self._events:
            for name, value in obs.features.items():
                if value is None:
                    continue
                if isinstance(value, str):
                    categorical.setdefault(name, []).append(value)
                else:
                    numeric.setdefault(name, []).append(float(value))
        for name in list(numeric):
            if self._kind(name) == "categorical":
                del numeric[name]
        counts = dict.fromkeys([*numeric, *categorical], len(self._events))
        preds = [p for p in self._predictions if p is not None]
        prediction: list[float] | list[str] | None = None
        if preds:
            prediction = ([str(p) for p in preds] if any(isinstance(p, str) for p in preds)
                          else [float(p) for p in preds if not isinstance(p, str)])
        stats = stats_from_sample(numeric, categorical, counts=counts, prediction=prediction)
        model, version = self.reference.model_name, self.reference.version
        # no head save here: the window's head (saved once it is closed) commits the reference with it
        self._set_reference(parse_reference(stats, model_name=model, version=version, source="bootstrap",
                                            psi_bins=self.config.psi_bins))

    def _distribution_rows(self) -> list[FeatureDrift]:
        c = self.config
        rows: list[FeatureDrift] = []
        numeric = sorted(self._numeric.items())
        # KS statistics first, then every feature's p-value in one batch (see ks_p_values)
        ks: dict[str, tuple[float, int, int]] = {}
        for name, acc in numeric:
            if acc.ks is not None and acc.ks.n >= c.min_samples and acc.ref.ks is not None:
                grid = acc.ref.ks
                ks[name] = (grid.statistic(acc.ks.counts, acc.ks.n), grid.n_reference, acc.ks.n)
        p_values = dict(zip(ks, ks_p_values(list(ks.values())), strict=True))
        for name, acc in numeric:
            if name in ks:
                d, _, m = ks[name]
                rows.append(_row(name, "ks", TestResult(d, p_values[name], m), c.alpha))
            if acc.bins is not None and acc.bins.n >= c.min_samples and acc.ref.bins is not None:
                rows.append(_row(name, "psi", acc.ref.bins.psi(acc.bins), c.psi_threshold))
        for name, table in sorted(self._categorical.items()):
            if table.n < c.min_samples:
                continue
            chi, _, _ = table.chi2()
            rows.append(_row(name, "chi2", chi, c.alpha))
            rows.append(_row(name, "js", table.js(), c.js_threshold))
            rows.append(_row(name, "new_categories", table.new_share(), c.new_category_threshold))
        return rows

    def _quality_rows(self) -> list[FeatureDrift]:
        c = self.config
        m = len(self._events)
        rows: list[FeatureDrift] = []
        expected = self._expected()
        for name, required in sorted(expected.items()):
            present = self._present.get(name, 0)
            ref = self.reference.features.get(name)
            base = ref.missing_rate if ref is not None else 0.0
            missing = 1 - present / m
            rows.append(FeatureDrift(feature=name, test="missing_rate", statistic=missing,
                                     threshold=min(1.0, base + c.missing_rate_tolerance),
                                     drifted=missing > base + c.missing_rate_tolerance, sample_size=m))
            if required and self._carried.get(name, 0) == 0:
                rows.append(FeatureDrift(feature=name, test="missing_features", statistic=1.0, threshold=0.0,
                                         drifted=True, sample_size=m))
            lo, hi = self._bound_cache.get(name, (None, None))
            if self._kind(name) == "numeric" and (lo is not None or hi is not None) and present:
                share = self._out_of_range.get(name, 0) / present
                rows.append(FeatureDrift(feature=name, test="out_of_range", statistic=share,
                                         threshold=c.out_of_range_tolerance,
                                         drifted=share > c.out_of_range_tolerance, sample_size=present))
        if expected:
            unexpected = sorted(n for n, k in self._carried.items() if k > 0 and n not in expected)
            for name in unexpected[:MAX_UNEXPECTED_REPORTED]:
                rows.append(FeatureDrift(feature=name, test="unexpected_features", statistic=self._carried[name] / m,
                                         threshold=0.0, drifted=True, sample_size=m))
        return rows

    def _prediction_rows(self) -> list[FeatureDrift]:
        c = self.config
        ref = self.reference.prediction
        preds = [p for p in self._predictions if p is not None]
        if ref is None or len(preds) < c.min_samples:
            return []
        rows: list[FeatureDrift] = []
        if isinstance(ref, NumericReference):
            values = [float(p) for p in preds if not isinstance(p, str)]
            if ref.ks is not None and len(values) >= c.min_samples:
                counter = ref.ks.counter()
                counter.add_many(values)
                rows.append(_row(PREDICTION, "prediction_ks", ref.ks.test(counter), c.alpha))
            if ref.bins is not None and len(values) >= c.min_samples:
                counter = ref.bins.counter()
                counter.add_many(values)
                rows.append(_row(PREDICTION, "prediction_psi", ref.bins.psi(counter), c.psi_threshold))
        else:
            table = CategoryTable(ref.frequencies)
            for p in preds:
                table.add(_category(p))
            counts = [int(x) for x in table.counts] + list(table.new.values())
            shares = [*table.reference.tolist(), *([0.0] * len(table.new))]
            rows.append(_row(PREDICTION, "prediction_psi", TestResult(psi(shares, counts), None, table.n),
                             c.psi_threshold))
        return rows

    def _concept_rows(self) -> list[FeatureDrift]:
        total, n = self.window_errors
        if n == 0:
            return []
        rate = total / n
        adwin = self._detectors[0]
        return [FeatureDrift(feature=ERROR_RATE, test="adwin", statistic=adwin.estimation, threshold=0.0,
                             drifted=bool(self.flags.get("adwin")), sample_size=int(n)),
                FeatureDrift(feature=ERROR_RATE, test="page_hinkley", statistic=rate, threshold=0.0,
                             drifted=bool(self.flags.get("page_hinkley")), sample_size=int(n))]

    def _corrected(self, rows: list[FeatureDrift]) -> list[FeatureDrift]:
        tested = [i for i, r in enumerate(rows) if r.test in P_VALUE_TESTS and r.p_value is not None]
        adjusted = correct([rows[i].p_value or 0.0 for i in tested], self.config.correction)
        out = list(rows)
        for i, adj in zip(tested, adjusted, strict=True):
            out[i] = rows[i].model_copy(update={"adjusted_p_value": adj, "drifted": adj < self.config.alpha})
        return out


def _row(feature: str, test: DriftTest, result: TestResult, threshold: float) -> FeatureDrift:
    """A result row; p-value tests are decided after correction, the others on their threshold."""
    drifted = result.p_value is None and result.statistic > threshold
    return FeatureDrift(feature=feature, test=test, statistic=result.statistic, p_value=result.p_value,
                        threshold=threshold, drifted=drifted, sample_size=result.sample_size)


def _category(value: FeatureValue) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def error_of(prediction: FeatureValue, label: bool | int | float | str, *, regression: bool) -> float:
    """The error of one prediction: absolute error for regression, 0/1 for a class.

    A binary model's prediction is the probability of class 1 (the gateway publishes the score),
    so a fractional score in [0, 1] against a 0/1 label counts as class 1 from 0.5 on.

    Examples:
        >>> error_of(1, True, regression=False), error_of("a", "b", regression=False)
        (0.0, 1.0)
        >>> error_of(0.73, 1, regression=False), error_of(0.73, False, regression=False)
        (0.0, 1.0)
        >>> error_of(2.0, 3.5, regression=True)
        1.5

    """
    if regression and not isinstance(prediction, str) and prediction is not None and not isinstance(label, str):
        return abs(float(prediction) - float(label))
    label_value: FeatureValue = int(label) if isinstance(label, bool) else label
    if (isinstance(prediction, float) and not prediction.is_integer() and 0 < prediction < 1
            and label_value in (0, 1, "0", "1")):
        return 0.0 if int(prediction >= 0.5) == int(label_value) else 1.0
    return 0.0 if _category(prediction) == _category(label_value) else 1.0

