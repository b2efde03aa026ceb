"""Envelope <-> bytes. The only place where event bytes are made or read."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from schemas.envelope import Envelope, Event, event_class

P = TypeVar("P", bound=Event)


class PoisonMessage(Exception):
    """A record that can never be processed (bad bytes, wrong schema): dead-letter it, never retry."""


def encode(envelope: Envelope[Any]) -> bytes:
    """The wire form of ``envelope``: compact UTF-8 JSON."""
    return encode_event(envelope.payload, event_id=envelope.event_id, source=envelope.source,
                        occurred_at=envelope.occurred_at, traceparent=envelope.traceparent,
                        event_type=envelope.event_type)


def encode_event(payload: Event, *, event_id: str, source: str, occurred_at: datetime,
                 traceparent: str | None = None, event_type: str | None = None) -> bytes:
    """The wire form of an envelope around ``payload``, without building the envelope model.

    The hot path of every producer: the payload was validated when it was made, so its fields
    are serialised as they are (orjson, datetimes as RFC 3339). Contracts use plain fields
    only (no aliases or custom serialisers), which is what makes this equal to pydantic's own
    JSON; a test holds every contract to that.
    """
    return orjson.dumps(
        {
            "event_id": event_id,
            "event_type": event_type or payload.EVENT_TYPE,
            "occurred_at": occurred_at,
            "source": source,
            "traceparent": traceparent,
            "payload": payload.__dict__,
        },
        default=_nested,
    )


def encode_event_dicts(payloads: Sequence[Mapping[str, Any]], *, event_type: str, source: str,
                       occurred_at: datetime, traceparent: str | None = None) -> list[bytes]:
    """:func:`encode_event` for a batch of payloads already validated into dicts of their contract's fields.

    Each dict must hold every field of the ``event_type`` contract (defaults included) and its
    ``event_id``; a test holds the bytes equal to what :func:`encode_event` makes of the model.
    """
    dumps = orjson.dumps
    return [
        dumps({"event_id": p["event_id"], "event_type": event_type, "occurred_at": occurred_at, "source": source,
               "traceparent": traceparent, "payload": p})
        for p in payloads
    ]


def encode_event_payloads(payloads: Sequence[bytes], event_ids: Sequence[str], *, event_type: str, source: str,
                          occurred_at: datetime, traceparent: str | None = None) -> list[bytes]:
    """:func:`encode_event` for a batch of payloads already encoded as JSON objects.

    For producers that validate and encode payloads in one pass elsewhere (e.g. with compiled
    structs): the envelope's fields are encoded once for the whole batch and each payload's
    bytes are placed in it as they are. Each payload must be the JSON object of every field of
    the ``event_type`` contract (defaults included) whose ``event_id`` is the matching entry of
    ``event_ids``; a test holds the result equal to :func:`encode_event_dicts`.
    """
    head = b'{"event_id":'
    middle = orjson.dumps({"event_type": event_type, "occurred_at": occurred_at, "source": source,
                           "traceparent": traceparent})
    middle = b"," + middle[1:-1] + b',"payload":'
    dumps, join = orjson.dumps, b"".join
    return [join((head, dumps(event_id), middle, payload, b"}"))
            for event_id, payload in zip(event_ids, payloads, strict=True)]


def _nested(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.__dict__
    raise TypeError(f"cannot encode {type(value).__name__} in an event")


def decode(raw: bytes | None, payload_type: type[P]) -> Envelope[P]:
    """Parse ``raw`` as an envelope of ``payload_type``.

    Raises:
        PoisonMessage: the bytes are not a valid envelope of that type.

    """
    if raw is None:
        raise PoisonMessage("record has no value (tombstone)")
    try:
        envelope = Envelope[payload_type].model_validate_json(raw)  # type: ignore[valid-type]
    except ValidationError as exc:
        raise PoisonMessage(_summary(exc)) from exc
    if envelope.event_type != payload_type.EVENT_TYPE:
        raise PoisonMessage(
            f"event_type {envelope.event_type!r} where {payload_type.EVENT_TYPE!r} was expected"
        )
    return envelope


def decode_any(raw: bytes | None) -> Envelope[Event]:
    """Parse ``raw`` as an envelope of whatever registered type its ``event_type`` names.

    Raises:
        PoisonMessage: the bytes are not an envelope, or of no known type.

    """
    if raw is None:
        raise PoisonMessage("record has no value (tombstone)")
    try:
        head = Envelope[Event].model_validate_json(raw)
        cls = event_class(head.event_type)
    except (ValidationError, KeyError) as exc:
        raise PoisonMessage(_summary(exc) if isinstance(exc, ValidationError) else str(exc)) from exc
    return decode(raw, cls)


def _summary(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:10]:
        loc = ".".join(str(p) for p in err["loc"]) or "<value>"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
