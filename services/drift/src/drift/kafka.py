"""Envelopes <-> bytes for the drift stream; the only module that sees record values."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TypeVar

from schemas.deadletter import DeadLetterV1
from schemas.envelope import Envelope, Event
from tributary_kit.codec import PoisonMessage, decode, encode, encode_event
from tributary_kit.deadletter import dead_letter

P = TypeVar("P", bound=Event)
SOURCE = "drift"

APP_ID_HEADER = "drift-app-id"
"""Record header of every report and retrain command: the app id (consumer group) of the drift
deployment that published it. Report ids are ``<dataset>-w<index>`` in every deployment, so two
deployments on one cluster (a staging drift beside production's, a test's beside a fixture's)
publish the same ids for the same dataset with their own windows; the header tells them apart."""

__all__ = ["APP_ID_HEADER", "SOURCE", "PoisonMessage", "dead_letter_bytes", "decode_value", "encode_payload",
           "provenance"]


def decode_value(raw: bytes | None, payload_type: type[P]) -> Envelope[P]:
    """The envelope in ``raw``.

    Raises:
        PoisonMessage: not a valid envelope of ``payload_type`` (dead-letter it).

    """
    return decode(raw, payload_type)


def encode_payload(payload: Event, *, event_id: str, traceparent: str | None = None) -> bytes:
    """An envelope around ``payload`` from this service, as bytes.

    ``event_id`` is deterministic (report and command ids), so a record published twice after
    a crash is dropped by consumers that deduplicate on it.
    """
    return encode_event(payload, event_id=event_id, source=SOURCE, occurred_at=datetime.now(UTC),
                        traceparent=traceparent)


def provenance(app_id: str) -> dict[str, bytes]:
    """The record headers naming the deployment that publishes a report or command."""
    return {APP_ID_HEADER: app_id.encode()}


def dead_letter_bytes(*, topic: str, partition: int, offset: int, key: bytes | None, raw: bytes | None,
                      reason: str) -> bytes:
    """A dead-letter record for an input that can never be processed."""
    envelope: Envelope[DeadLetterV1] = dead_letter(
        origin="kafka", topic=topic, reason=reason, payload=raw or b"", source=SOURCE, partition=partition,
        offset=offset, key=key.decode("utf-8", errors="replace") if key else None)
    return encode(envelope)


def new_id() -> str:
    """A fresh event id."""
    return str(uuid.uuid4())
