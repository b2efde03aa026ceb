"""Kafka clients of the trainer, and the only module where event bytes are made or read.

Feature and label records are read on a fast path (orjson, only the fields a training row
needs): they were validated by ingest before they reached the validated topics, and a window
rebuild reads millions of them. Commands and specs go through the full envelope validation.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import Consumer
from schemas.dataset import DatasetSpecRegisteredV1
from schemas.envelope import Envelope, Event
from schemas.training import RetrainCommandV1
from tributary_kit.codec import PoisonMessage, decode, encode_event
from tributary_kit.producer import AsyncProducer
from tributary_kit.telemetry import current_traceparent

from trainer.settings import Settings

SOURCE = "trainer"


def build_producer(settings: Settings) -> AsyncProducer:
    """The idempotent, acks=all producer of outcomes and commands."""
    return AsyncProducer({
        "bootstrap.servers": settings.kafka_bootstrap,
        "client.id": "trainer",
        "message.timeout.ms": int(settings.delivery_timeout_s * 1000),
        **settings.producer_config,
    })


def build_command_consumer(settings: Settings) -> Consumer:
    """The retrain-command consumer: offsets are committed by hand, after the outcome is published."""
    return Consumer({
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": settings.group_id,
        "client.id": "trainer-commands",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        # A command may train for up to the time budget between two polls.
        "max.poll.interval.ms": int(settings.max_poll_interval_s * 1000),
        # Heartbeats come from librdkafka's own thread, so a long training keeps the session alive.
        "session.timeout.ms": int(settings.session_timeout_s * 1000),
        "heartbeat.interval.ms": max(1000, int(settings.session_timeout_s * 1000 / 3)),
        **({"group.instance.id": settings.group_instance_id} if settings.group_instance_id else {}),
    })


def build_reader(bootstrap: str, purpose: str) -> Consumer:
    """A consumer for reading assigned ranges; it never commits (group id unique, nothing stored)."""
    return Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"trainer-{purpose}-{uuid.uuid4()}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
    })


def event_bytes(payload: Event, *, event_id: str | None = None) -> bytes:
    """The wire form of ``payload`` in an envelope from the trainer, with the current trace context."""
    return encode_event(payload, event_id=event_id or str(uuid.uuid4()), source=SOURCE,
                        occurred_at=datetime.now(UTC), traceparent=current_traceparent())


def decode_command(raw: bytes | None) -> Envelope[RetrainCommandV1]:
    """A retrain command record.

    Raises:
        PoisonMessage: the record is not a valid command; dead-letter it.

    """
    return decode(raw, RetrainCommandV1)


def decode_spec(raw: bytes | None) -> DatasetSpecRegisteredV1:
    """A dataset-spec record.

    Raises:
        PoisonMessage: the record is not a valid spec event.

    """
    return decode(raw, DatasetSpecRegisteredV1).payload


def decode_outcome(raw: bytes | None, event_type: type[Event]) -> Any:
    """An outcome record of ``event_type`` (completed or failed), or None when unreadable."""
    try:
        return decode(raw, event_type).payload
    except PoisonMessage:
        return None


@dataclass(frozen=True, slots=True)
class FeatureRow:
    """The fields of a feature event a training row needs."""

    event_id: str
    entity_id: str
    event_time: float
    features: dict[str, object]
    label: object


@dataclass(frozen=True, slots=True)
class LabelRow:
    """The fields of a label event the join needs."""

    event_id: str
    entity_id: str
    event_time: float
    label: object
    feature_event_id: str | None


class Unreadable(Exception):
    """A record on a validated topic that cannot be read as its event."""


def _payload(raw: bytes | None, dataset: str) -> dict[str, Any] | None:
    if raw is None:
        raise Unreadable("record has no value")
    try:
        envelope = orjson.loads(raw)
        payload: dict[str, Any] = envelope["payload"]
        if payload.get("dataset") != dataset:
            return None
        return payload
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise Unreadable(str(exc)) from exc


def _time(text: Any) -> float:
    return datetime.fromisoformat(text).timestamp()


def feature_row(raw: bytes | None, dataset: str) -> FeatureRow | None:
    """The feature event in ``raw`` when it belongs to ``dataset``, else None.

    Raises:
        Unreadable: the record is not a feature event.

    """
    payload = _payload(raw, dataset)
    if payload is None:
        return None
    try:
        features = payload["features"]
        if not isinstance(features, dict):
            raise TypeError("features is not an object")
        return FeatureRow(str(payload["event_id"]), str(payload["entity_id"]), _time(payload["event_time"]),
                          features, payload.get("label"))
    except (KeyError, TypeError, ValueError) as exc:
        raise Unreadable(f"not a feature event: {exc}") from exc


def label_row(raw: bytes | None, dataset: str) -> LabelRow | None:
    """The label event in ``raw`` when it belongs to ``dataset``, else None.

    Raises:
        Unreadable: the record is not a label event.

    """
    payload = _payload(raw, dataset)
    if payload is None:
        return None
    try:
        fid = payload.get("feature_event_id")
        return LabelRow(str(payload["event_id"]), str(payload["entity_id"]), _time(payload["event_time"]),
                        payload["label"], None if fid is None else str(fid))
    except (KeyError, TypeError, ValueError) as exc:
        raise Unreadable(f"not a label event: {exc}") from exc


def prediction_features(raw: bytes | None, model_name: str) -> dict[str, object] | None:
    """The request features of a prediction event of ``model_name``, or None (other model, unreadable)."""
    try:
        payload = orjson.loads(raw or b"")["payload"]
        if payload.get("model_name") != model_name:
            return None
        features = payload.get("features")
        return features if isinstance(features, dict) and features else None
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None
