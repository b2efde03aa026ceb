"""The run's timeline: one timestamped line per milestone of the closed loop, read from Kafka.

A consumer without a group follows the topics where the loop's decisions are recorded — drift
reports, retrain commands, training outcomes and gate decisions, registrations, rollout changes
and canary decisions — from the moment the run started, and turns each into one line. At the
first new champion after the shift it prints the drift-to-recovery time, measured from the
shift's onset.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from pydantic import ValidationError
from schemas.drift import DriftReportV1
from schemas.envelope import Envelope
from schemas.inference import CanaryDecidedV1
from schemas.registry import ModelRegisteredV1, RolloutChangedV1
from schemas.training import PromotionDecidedV1, RetrainCommandV1, TrainingCompletedV1, TrainingFailedV1

from schemas import topics

PAYLOADS: dict[str, type[Any]] = {
    topics.DRIFT_REPORTS: DriftReportV1,
    topics.RETRAIN_COMMANDS: RetrainCommandV1,
    topics.TRAINING_COMPLETED: TrainingCompletedV1,
    topics.TRAINING_FAILED: TrainingFailedV1,
    topics.PROMOTION_DECISIONS: PromotionDecidedV1,
    topics.MODEL_REGISTERED: ModelRegisteredV1,
    topics.ROLLOUT_CHANGED: RolloutChangedV1,
    topics.CANARY_DECISIONS: CanaryDecidedV1,
}


def say(message: str) -> None:
    """One timestamped line on the terminal."""
    print(f"{datetime.now():%H:%M:%S}  {message}", flush=True)


@dataclass
class LoopState:
    """What the timeline knows of the loop (read by the progress line and the runner)."""

    champion: int | None = None
    canary: int | None = None
    canary_weight: float | None = None
    windows: int = 0
    drifted_windows: int = 0
    shifted_at: float | None = None
    """Wall-clock time of the shift's onset (set by the runner)."""
    drift_at: float | None = None
    recovered_s: float | None = None
    """Shift onset to the new champion, once it happened."""
    promoted: threading.Event = field(default_factory=threading.Event)
    registered: dict[int, ModelRegisteredV1] = field(default_factory=dict)


class Timeline:
    """Follows the loop's topics from ``since`` (epoch seconds) and prints each milestone."""

    def __init__(self, bootstrap: str, model: str, *, since: float, state: LoopState,
                 print_line: Callable[[str], None] = say) -> None:
        self.bootstrap = bootstrap
        self.model = model
        self.since_ms = int(since * 1000)
        self.state = state
        self.say = print_line
        self.stop = threading.Event()

    def run(self) -> None:
        """Poll until stopped (in a thread)."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "tributary-demo-timeline",
                             "enable.auto.commit": False, "auto.offset.reset": "earliest"})
        try:
            wanted = []
            metadata = consumer.list_topics(timeout=10)
            for name in PAYLOADS:
                for p in metadata.topics[name].partitions:
                    wanted.append(TopicPartition(name, p, self.since_ms))
            consumer.assign(consumer.offsets_for_times(wanted, timeout=10))
            seen: set[tuple[str, int, int]] = set()
            while not self.stop.is_set():
                msg = consumer.poll(0.5)
                if msg is None or msg.error() is not None:
                    continue
                payload_type = PAYLOADS[msg.topic()]
                try:
                    envelope = Envelope[payload_type].model_validate_json(msg.value())  # type: ignore[valid-type]
                except ValidationError:
                    continue
                position = (msg.topic(), msg.partition(), msg.offset())
                if position in seen:
                    continue  # a record the client fetched twice (e.g. after a fetch reset)
                seen.add(position)
                self.on_event(envelope.payload)
        finally:
            consumer.close()

    def on_event(self, event: Any) -> None:
        """One line for one milestone (events of other models are ignored)."""
        if not isinstance(event, DriftReportV1) and event.model_name != self.model:
            return  # drift reports name no model until a champion is known
        s = self.state
        if isinstance(event, DriftReportV1):
            s.windows += 1
            if not event.drifted or event.model_version is None:
                return  # before a champion there is no reference to drift from
            s.drifted_windows += 1
            if s.drift_at is None:
                s.drift_at = time.time()
            flagged = sorted({f"{r.feature}:{r.test}" for r in event.results if r.drifted})
            features = ", ".join(event.drifted_features) or "-"
            self.say(f"drift detected in window {event.report_id} against v{event.model_version}: features "
                     f"{features} ({', '.join(flagged[:8])}){'; retrain requested' if event.retrain_requested else ''}")
        elif isinstance(event, RetrainCommandV1):
            window = event.window
            start = "log start" if window.start_time is None else f"{window.start_time:%H:%M:%S}"
            end = "now" if window.end_time is None else f"{window.end_time:%H:%M:%S}"
            self.say(f"retrain command {event.command_id} (reason {event.reason}, window {start} -> {end})")
        elif isinstance(event, PromotionDecidedV1):
            overall = {c.metric: c for c in event.checks if c.feature is None}
            auc = overall.get("auc")
            vs = "" if auc is None else (f", holdout auc {auc.candidate:.3f} vs champion "
                                         f"{'-' if auc.champion is None else f'{auc.champion:.3f}'}")
            serving = f", serving check {event.serving.status}" if event.serving else ""
            why = "" if event.decision == "promote" else f": {'; '.join(event.reasons)}"
            self.say(f"gate decision: {event.decision} v{event.candidate_version or '-'}"
                     f" (champion v{event.champion_version or '-'}{vs}{serving}){why}")
        elif isinstance(event, TrainingCompletedV1):
            self.say(f"training {event.command_id}: {event.outcome} v{event.version or '-'} "
                     f"({event.train_rows} training rows, {event.epochs} epochs, {event.duration_s:.1f} s)")
        elif isinstance(event, TrainingFailedV1):
            self.say(f"training {event.command_id} failed: {event.reason}: {event.message}")
        elif isinstance(event, ModelRegisteredV1):
            s.registered[event.version] = event
            metrics = ", ".join(f"{k} {v:.3f}" for k, v in sorted(event.metrics.items()) if k in ("auc", "accuracy"))
            self.say(f"model {event.model_name} v{event.version} registered ({metrics})")
        elif isinstance(event, RolloutChangedV1):
            self._on_rollout(event)
        elif isinstance(event, CanaryDecidedV1):
            if event.action == "hold":
                return
            acc = "" if event.canary.accuracy is None else f", online accuracy {event.canary.accuracy:.2%}"
            champ = "" if event.champion.accuracy is None else f" vs {event.champion.accuracy:.2%}"
            self.say(f"canary analysis: {event.action} v{event.canary.version} "
                     f"{event.weight_before:.0%} -> {event.weight_after:.0%} "
                     f"({event.canary.requests} canary requests{acc}{champ})")

    def _on_rollout(self, event: RolloutChangedV1) -> None:
        s = self.state
        by = f" by {event.changed_by}"
        if event.alias == "champion" and event.version is not None:
            previous = s.champion
            s.champion = event.version
            if previous is None or event.version == previous:
                self.say(f"v{event.version} is champion{by}")
                return
            self.say(f"promoted: v{event.version} is champion (was v{previous}){by}")
            if s.shifted_at is not None and s.recovered_s is None:
                s.recovered_s = time.time() - s.shifted_at
                detect = ("" if s.drift_at is None
                          else f" (drift first detected after {s.drift_at - s.shifted_at:.1f} s)")
                self.say(f"shift onset -> new champion: {s.recovered_s:.1f} s{detect}")
                s.promoted.set()
        elif event.alias == "canary":
            if event.version is None:
                s.canary, s.canary_weight = None, None
                if event.previous_version is not None and event.previous_version != s.champion:
                    self.say(f"canary v{event.previous_version} removed{by}")
                return
            s.canary, s.canary_weight = event.version, event.weight
            self.say(f"canary v{event.version} at {event.weight or 0:.0%}{by}")
        elif event.alias == "shadow" and event.version is not None:
            self.say(f"v{event.version} staged as shadow for the Triton serving check{by}")
