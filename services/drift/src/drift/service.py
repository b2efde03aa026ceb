"""The drift core: events to monitors, champions' references, label joins, reports and commands.

Routes events to the per-dataset monitors, keeps the champions' references, joins labels to
predictions, and publishes reports and retrain commands. Knows nothing of Kafka.

Everything durable goes through one ``MutableMapping`` (the stream's Faust table): the
monitors' windows, the dataset specs, which dataset each model serves, the current champion
per model and the predictions waiting for their label.

Exactly once per record: a record that changes a dataset's state saves its position in the
dataset's head, the commit point, with its effect (:class:`~drift.monitor.DatasetMonitor`);
every other write of the record comes before the head and is harmless when the head is lost
and the record applied again: a pending prediction names the record that wrote it (its
redelivery finds it written), and a label marks the prediction it joins before the head (its
redelivery finds its own mark and counts the error; any other label finds the prediction
taken) and deletes it after, unless the prediction's own head is not written yet (a crash
lost it and the label came first after the restart): then the marked entry stays, so the
prediction's redelivery finds it taken instead of waiting for a label again.

Pending predictions are bounded: a dataset keeps at most ``pending_max`` and none older than
``pending_ttl_s`` of event time (``served_at``) behind the newest; the oldest go first and are
counted in ``drift_pending_predictions_evicted_total``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from schemas.dataset import DatasetSpec, DatasetSpecRegisteredV1
from schemas.drift import DriftReportV1
from schemas.inference import PredictionEventV1
from schemas.ingest import FeatureEventV1, LabelEventV1
from schemas.registry import ModelRegisteredV1, RolloutChangedV1
from schemas.training import RetrainCommandV1, TrainingWindow

from drift import metrics
from drift.errors import ReferenceUnavailable, ReportNotFound, UnknownDataset
from drift.monitor import DatasetMonitor, MonitorConfig, Observation, RecordPosition, WindowOutcome, error_of
from drift.reference import VersionInfo, parse_reference

log = logging.getLogger(__name__)

__all__ = ["DriftService", "Publisher", "RecordPosition", "ReferenceSource"]


class ReferenceSource(Protocol):
    """Where champions' reference statistics come from (the registry client, or a fake)."""

    async def version(self, model_name: str, version: int) -> VersionInfo:
        """One version's dataset and reference statistics."""
        ...


class Publisher(Protocol):
    """Publishes what the drift service decides."""

    async def report(self, report: DriftReportV1) -> None:
        """Publish one window's report."""
        ...

    async def command(self, command: RetrainCommandV1) -> None:
        """Publish a retrain command."""
        ...


class DriftService:
    """Transport-agnostic drift handling; the stream's agents call one method per event."""

    def __init__(self, config: MonitorConfig, store: MutableMapping[str, Any], *, references: ReferenceSource,
                 publisher: Publisher, requested_by: str = "drift", retrain_window_s: float | None = None,
                 recovery_objective_s: float = 4 * 3600.0, clock: Callable[[], float] = time.time,
                 pending_ttl_s: float | None = 7 * 86400.0, pending_max: int = 100_000) -> None:
        self.config = config
        self.pending_ttl_s = pending_ttl_s
        self.pending_max = pending_max
        self._pending: dict[str, dict[str, float]] = {}   # per dataset: entity -> served_at, oldest first
        self._newest: dict[str, float] = {}
        self.recovery_objective_s = recovery_objective_s
        self._clock = clock
        self.store = store
        self._references = references
        self._publisher = publisher
        self._requested_by = requested_by
        self._retrain_window_s = retrain_window_s
        self._monitors: dict[str, DatasetMonitor] = {}

    def monitor(self, dataset: str) -> DatasetMonitor:
        """The monitor of ``dataset`` (restored from the store the first time)."""
        found = self._monitors.get(dataset)
        if found is None:
            raw_spec = self.store.get(f"spec/{dataset}")
            spec = DatasetSpec.model_validate(raw_spec) if raw_spec else None
            found = self._monitors[dataset] = DatasetMonitor(dataset, self.config, self.store, spec=spec)
            self._restore_gauges(found)
        return found

    def forget_monitors(self) -> None:
        """Drop the monitors built so far; each is restored from the store again when next used.

        Called when the table's recovery completes: a monitor built while the changelog was
        still being read (a status request during a restart) holds a prefix of the state, and
        the agents would go on from it.
        """
        self._monitors.clear()
        self._pending.clear()
        self._newest.clear()

    def applied_through(self, topic: str, partition: int) -> int | None:
        """The partition's next offset after every record whose position a dataset's head holds.

        Read by the positions (:class:`~drift.positions.Positions`) once per partition after a
        restore: a crash after a record's head and before its ``pos/`` write leaves this one.
        """
        where = f"{topic}:{partition}"
        found = [last + 1 for dataset in self.datasets()
                 if (last := (self.store.get(f"head/{dataset}") or {}).get("last", {}).get(where)) is not None]
        return max(found, default=None)

    def restore_gauges(self) -> None:
        """Set the gauges that describe durable state (open drift episode, reference version) from it.

        Gauges are process state: after a restart they would read 0 (no episode open) until the
        next window; called once the table is recovered, and for each monitor as it is restored.
        """
        for dataset in self.datasets():
            self.monitor(dataset)

    def _restore_gauges(self, monitor: DatasetMonitor) -> None:
        episode = self.store.get(f"episode/{monitor.dataset}")
        if episode:
            metrics.EPISODE_STARTED.labels(monitor.dataset).set(float(episode["started"]))
        if monitor.reference.usable and monitor.reference.version is not None:
            metrics.REFERENCE_VERSION.labels(monitor.dataset).set(monitor.reference.version)

    # ---- registry and specs ---------------------------------------------------------------

    async def on_spec(self, event: DatasetSpecRegisteredV1) -> None:
        """A dataset spec was registered or replaced.

        The highest revision wins, as in ingest's catalogue: a record of an older revision arriving
        after a newer one (two ingest replicas replacing a spec at once) changes nothing.
        """
        spec = event.spec
        held = self.store.get(f"spec-revision/{spec.name}")
        if held is not None and event.revision < held:
            log.info("older spec revision ignored", extra={"dataset": spec.name, "revision": event.revision,
                                                            "current": held})
            return
        self.store[f"spec-revision/{spec.name}"] = event.revision
        self.store[f"spec/{spec.name}"] = spec.model_dump(mode="json")
        if spec.name in self._monitors:
            self._monitors[spec.name].set_spec(spec)

    async def on_model_registered(self, event: ModelRegisteredV1) -> None:
        """Remember which dataset a model serves; refresh the reference when this version is champion."""
        if event.dataset:
            self.store[f"model/{event.model_name}"] = event.dataset
        if self.store.get(f"champion/{event.model_name}") == event.version:
            await self._load_reference(event.model_name, event.version, force=True)

    async def on_rollout_changed(self, event: RolloutChangedV1) -> None:
        """A new champion: test against its reference from now on.

        Records are taken in the order of their changes (:meth:`RolloutChangedV1.order`), not of
        their arrival: one older than the champion change already taken changes nothing. The
        rollout topic can carry an older record after a newer one (two writers at once, a registry
        clock behind the gateway's); the gateway then publishes the newer change again.
        """
        if event.alias != "champion":
            return
        key = f"champion-order/{event.model_name}"
        order = event.order()
        held = self.store.get(key)
        if held is not None and tuple(held) >= order:
            log.info("older champion change ignored", extra={"model": event.model_name, "version": event.version,
                                                              "changed_at": event.changed_at.isoformat()})
            return
        self.store[key] = list(order)
        if event.version is None:
            return
        self.store[f"champion/{event.model_name}"] = event.version
        self._end_episode(event)
        await self._load_reference(event.model_name, event.version, force=False)

    # ---- drift-to-recovery ----------------------------------------------------------------
    # An episode opens at the first drifted window of a dataset whose champion is known, and
    # closes when that model gets another champion; its length is drift-to-recovery time.

    def _start_episode(self, report: DriftReportV1) -> None:
        key = f"episode/{report.dataset}"
        if not report.drifted or report.model_name is None or key in self.store:
            return
        started = self._clock()
        self.store[key] = {"started": started, "model": report.model_name, "version": report.model_version}
        metrics.EPISODE_STARTED.labels(report.dataset).set(started)

    def _end_episode(self, event: RolloutChangedV1) -> float | None:
        dataset = self.store.get(f"model/{event.model_name}")
        episode = self.store.get(f"episode/{dataset}") if dataset else None
        if not episode or episode["model"] != event.model_name or episode["version"] == event.version:
            return None
        del self.store[f"episode/{dataset}"]
        seconds = max(0.0, event.changed_at.timestamp() - float(episode["started"]))
        met = "met" if seconds <= self.recovery_objective_s else "missed"
        metrics.RECOVERY_SECONDS.labels(dataset, event.model_name).set(seconds)
        metrics.RECOVERIES.labels(dataset, event.model_name, met).inc()
        metrics.EPISODE_STARTED.labels(dataset).set(0)
        log.info("drift recovered", extra={"dataset": dataset, "model": event.model_name, "version": event.version,
                                           "recovery_s": round(seconds, 3), "objective": met})
        return seconds

    async def _load_reference(self, model_name: str, version: int, *, force: bool) -> None:
        try:
            info = await self._references.version(model_name, version)
        except ReferenceUnavailable as exc:
            log.warning("reference not loaded", extra={"model": model_name, "version": version, "reason": str(exc)})
            self.store[f"reference-error/{model_name}"] = str(exc)
            return
        self.store.pop(f"reference-error/{model_name}", None)
        dataset = info.dataset or self.store.get(f"model/{model_name}")
        if not dataset:
            log.warning("champion serves no known dataset; no reference set", extra={"model": model_name})
            return
        self.store[f"model/{model_name}"] = dataset
        monitor = self.monitor(dataset)
        current = monitor.reference
        if not force and current.model_name == model_name and current.version == version:
            return  # redelivered or replayed rollout: keep the state (no re-arm)
        reference = parse_reference(info.reference_stats, model_name=model_name, version=version,
                                    psi_bins=self.config.psi_bins)
        if reference.source == "none":
            reference = type(reference)(model_name, version, "none", problems=reference.problems)
        monitor.set_reference(reference)
        metrics.REFERENCE_VERSION.labels(dataset).set(version if reference.usable else 0)
        log.info("reference set", extra={"dataset": dataset, "model": model_name, "version": version,
                                         "source": reference.source, "problems": reference.problems[:5]})

    # ---- data -----------------------------------------------------------------------------

    async def on_features(self, event: FeatureEventV1, at: RecordPosition) -> WindowOutcome | None:
        """Count one feature event; publish the report (and command) of a window it closes.

        Reports of windows closed before a crash but never acknowledged by the broker are
        published first (same ids), so a restart neither skips nor renumbers a window.
        """
        monitor = self.monitor(event.dataset)
        for pending in monitor.unpublished():
            log.info("publishing a report again after a restart", extra={"report_id": pending.report_id})
            await self._emit(monitor, pending, retrain=pending.retrain_requested)
        outcome = monitor.observe(Observation(dict(event.features), event.event_time, at.topic, at.partition,
                                              at.offset, event.event_id))
        if outcome is None:
            return None
        await self._emit(monitor, outcome.report, retrain=outcome.retrain)
        return outcome

    async def _emit(self, monitor: DatasetMonitor, report: DriftReportV1, *, retrain: bool) -> None:
        """Metrics, drift episode, the report and its retrain command; then count the report published."""
        for row in report.results:
            labels = (report.dataset, row.feature, row.test)
            metrics.STATISTIC.labels(*labels).set(row.statistic)
            metrics.DRIFTED.labels(*labels).set(1 if row.drifted else 0)
            if row.adjusted_p_value is not None:
                metrics.P_VALUE.labels(*labels).set(row.adjusted_p_value)
            if row.test == "page_hinkley":
                metrics.ERROR_RATE.labels(report.dataset).set(row.statistic)
        metrics.WINDOWS.labels(report.dataset, "drifted" if report.drifted else "clean").inc()
        self._start_episode(report)
        await self._publisher.report(report)
        if retrain:
            if report.model_name is None:
                log.warning("retrain wanted but no champion is known for the dataset",
                            extra={"dataset": report.dataset})
            else:
                await self._publisher.command(self.command_for(report))
                metrics.RETRAINS.labels(report.dataset, report.model_name).inc()
        monitor.mark_published(int(report.report_id.rsplit("-w", 1)[1]) + 1)

    def command_for(self, report: DriftReportV1, *, now: datetime | None = None) -> RetrainCommandV1:
        """The retrain command a drifted report asks for (its id is derived from the report's).

        The window is in Kafka time, ending now: the trainer finds a window's records by the
        time Kafka stored them, so a window anchored at the report's *event* times would miss
        every back-filled event (event times in the past, stored just now) and come back empty.
        """
        assert report.model_name is not None
        end = now or datetime.now(UTC)
        start = None if self._retrain_window_s is None else end - timedelta(seconds=self._retrain_window_s)
        return RetrainCommandV1(
            command_id=f"drift-{report.report_id}", dataset=report.dataset, model_name=report.model_name,
            reason="drift", window=TrainingWindow(start_time=start, end_time=end),
            requested_by=self._requested_by,
            requested_at=end, drift_report_id=report.report_id,
            note=f"drifted: {', '.join(report.drifted_features[:20])}; {report.decision}"[:1000])

    def _dataset_of(self, dataset: str | None, model_name: str) -> str | None:
        return dataset or self.store.get(f"model/{model_name}")

    def on_prediction(self, event: PredictionEventV1, at: RecordPosition | None = None) -> bool:
        """Count a champion prediction and keep it for the label join; False when it was not used.

        ``at``: where the record was read (its position goes into the dataset's head).
        """
        dataset = self._dataset_of(event.dataset, event.model_name)
        if event.route != "champion" or not dataset:
            return False
        value = event.prediction
        if value is None and event.outputs:
            first = next(iter(event.outputs.values()))
            value = first[0] if len(first) == 1 else None
        monitor = self.monitor(dataset)
        if event.entity_id and value is not None:
            self._keep_pending(dataset, event, value, at)
        monitor.observe_prediction(value, at)   # the head, last: the record's commit point
        return True

    def _keep_pending(self, dataset: str, event: PredictionEventV1, value: float | int | str,
                      at: RecordPosition | None) -> None:
        assert event.entity_id is not None
        key = f"pred/{dataset}/{event.entity_id}"
        mark = _mark(at)
        current = self.store.get(key)
        if mark is not None and isinstance(current, dict) and current.get("at") == mark:
            return   # this record again (its head was lost): written already, maybe joined since
        served = event.served_at.timestamp()
        self.store[key] = {"v": value, "ver": event.model_version, "t": served, "at": mark}
        index = self._pending_index(dataset)
        index.pop(event.entity_id, None)
        index[event.entity_id] = served
        newest = self._newest[dataset] = max(self._newest.get(dataset, served), served)
        while index:
            entity, t = next(iter(index.items()))
            if len(index) > self.pending_max:
                reason = "limit"
            elif self.pending_ttl_s is not None and t < newest - self.pending_ttl_s:
                reason = "ttl"
            else:
                break
            del index[entity]
            self.store.pop(f"pred/{dataset}/{entity}", None)
            metrics.PENDING_EVICTED.labels(dataset, reason).inc()
        metrics.PENDING.labels(dataset).set(len(index))

    def _pending_index(self, dataset: str) -> dict[str, float]:
        """The dataset's pending predictions by entity, oldest first (read from the store once)."""
        index = self._pending.get(dataset)
        if index is None:
            prefix = f"pred/{dataset}/"
            found: list[tuple[float, str]] = []
            for key in list(self.store.keys()):
                if str(key).startswith(prefix):
                    raw = self.store.get(key)
                    # entries of earlier versions ([value, version]) have no time: oldest of all
                    found.append((float(raw.get("t", 0.0)) if isinstance(raw, dict) else float("-inf"),
                                  str(key)[len(prefix):]))
            found.sort()
            index = self._pending[dataset] = {entity: t for t, entity in found}
            if found and found[-1][0] != float("-inf"):
                self._newest[dataset] = max(self._newest.get(dataset, found[-1][0]), found[-1][0])
        return index

    def on_label(self, event: LabelEventV1, at: RecordPosition | None = None) -> bool:
        """Join a label to its entity's last champion prediction and feed the error to the detectors.

        ``at``: where the record was read (its position goes into the dataset's head).
        """
        key = f"pred/{event.dataset}/{event.entity_id}"
        raw = self.store.get(key)
        if raw is None:
            return False
        pending = raw if isinstance(raw, dict) else {"v": raw[0], "ver": raw[1]}
        mark = _mark(at)
        joined = pending.get("joined")
        if joined is not None and joined != mark:
            return False   # taken by an earlier label (whose head was saved, the delete was not)
        if mark is not None and joined is None:
            # marked before the head: a redelivery of this label finds its own mark and counts once
            self.store[key] = {**pending, "joined": mark}
        raw_spec = self.store.get(f"spec/{event.dataset}")
        regression = (raw_spec or {}).get("label", {}).get("type") == "regression"
        monitor = self.monitor(event.dataset)
        monitor.observe_error(error_of(pending["v"], event.label, regression=regression), at)
        if mark is not None and not _committed(monitor, pending.get("at")):
            # The prediction's own head was lost in a crash (its entry got in, this label came
            # first from another topic): it will be applied again and must find its entry
            # taken, not write it afresh, so the marked entry stays (until a newer prediction
            # of the entity or the bounds drop it).
            return True
        self.store.pop(key, None)
        index = self._pending_index(event.dataset)
        index.pop(event.entity_id, None)
        metrics.PENDING.labels(event.dataset).set(len(index))
        return True

    # ---- queries --------------------------------------------------------------------------

    def datasets(self) -> list[str]:
        """Datasets with monitor state."""
        return sorted({str(k)[5:] for k in list(self.store.keys()) if str(k).startswith("head/")})

    def status(self) -> dict[str, Any]:
        """Every dataset's window progress, reference, policy state and last report."""
        out = []
        for dataset in self.datasets():
            m = self.monitor(dataset)
            reports = self.store.get(f"reports/{dataset}") or []
            last = reports[-1] if reports else None
            ref = m.reference
            out.append({
                "dataset": dataset,
                "model_name": ref.model_name,
                "model_version": ref.version,
                "reference": {"source": ref.source, "features": sorted(ref.features),
                              "prediction": ref.prediction is not None, "problems": ref.problems,
                              "error": self.store.get(f"reference-error/{ref.model_name}") if ref.model_name else None},
                "events": m.seq,
                "window": {"size": m.config.window_size, "step": m.config.window_step, "in_window": m.in_window,
                           "closed": m.windows},
                "policy": m.policy_state.to_dict(),
                "joined_errors": m.eseq,
                "last_report": None if last is None else {
                    "report_id": last["report_id"], "window_end": last["window_end"], "drifted": last["drifted"],
                    "drifted_features": last["drifted_features"], "retrain_requested": last["retrain_requested"],
                    "decision": last["decision"]},
            })
        return {"datasets": out}

    def reports(self, dataset: str, limit: int) -> list[DriftReportV1]:
        """The most recent reports of ``dataset``, newest first.

        Raises:
            UnknownDataset: no state for that dataset.

        """
        if f"head/{dataset}" not in self.store:
            raise UnknownDataset(f"no drift state for dataset {dataset!r}; is it receiving feature events?")
        raw = self.store.get(f"reports/{dataset}") or []
        return [DriftReportV1.model_validate(r) for r in reversed(raw[-limit:])]

    def report(self, report_id: str) -> DriftReportV1:
        """One recent report by id.

        Raises:
            ReportNotFound: not among the reports kept.

        """
        dataset = report_id.rsplit("-w", 1)[0]
        for raw in self.store.get(f"reports/{dataset}") or []:
            if raw["report_id"] == report_id:
                return DriftReportV1.model_validate(raw)
        raise ReportNotFound(f"report {report_id!r} is not among the last {self.config.reports_kept} of its dataset")


def _committed(monitor: DatasetMonitor, mark: str | None) -> bool:
    """Whether the record ``mark`` names (``topic:partition:offset``) is covered by the dataset's head."""
    if mark is None:
        return True
    topic, partition, offset = mark.rsplit(":", 2)
    return (monitor.applied_through(topic, int(partition)) or 0) > int(offset)


def _mark(at: RecordPosition | None) -> str | None:
    """A record's identity in the state: ``topic:partition:offset``."""
    return None if at is None else f"{at.topic}:{at.partition}:{at.offset}"
