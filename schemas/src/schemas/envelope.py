"""The envelope every event travels in, the ``Event`` base class and the event-type registry.

The envelope carries what every consumer needs before it looks at the payload: a
deduplication id, the event type, when and where the event was made, and the W3C trace
context, so a trace follows the event across services (the trace context lives in the value,
not in Kafka headers, so it survives any client and any replay).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Generic, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

EVENT_TYPE_PATTERN = re.compile(r"^[a-z-]+\.[a-z-]+\.v\d+$")

EventId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$"),
]
"""A producer-chosen id: letters, digits and ``._:-``, at most 128 characters (a UUID fits)."""

DatasetName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.\-]{0,127}$")]
"""A dataset name: lower-case letters, digits and ``_.-``, at most 128 characters."""

_REGISTRY: dict[str, type[Event]] = {}


class Event(BaseModel):
    """Base of every payload; subclasses set ``EVENT_TYPE`` and are registered by it.

    Payloads are frozen (an event is a fact) and ignore unknown fields (tolerant reader), so
    a consumer on an older minor release still reads events with added optional fields.
    """

    model_config = ConfigDict(frozen=True, extra="ignore", protected_namespaces=())

    EVENT_TYPE: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        event_type = cls.__dict__.get("EVENT_TYPE")
        if event_type is None:
            return
        if not EVENT_TYPE_PATTERN.match(event_type):
            raise ValueError(f"{cls.__name__}.EVENT_TYPE {event_type!r} is not <domain>.<event>.v<N>")
        if event_type in _REGISTRY and _REGISTRY[event_type].__qualname__ != cls.__qualname__:
            raise ValueError(f"event type {event_type!r} is declared twice")
        _REGISTRY[event_type] = cls


P = TypeVar("P", bound=Event)


class Envelope(BaseModel, Generic[P]):
    """One event on the wire: identity, provenance and trace context around a typed payload.

    ``event_id`` is the deduplication key for at-least-once consumers. For data events
    (features, labels) it is the producer's own event id, so a producer that retries a
    request cannot create a second event.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: EventId
    event_type: str
    occurred_at: AwareDatetime
    source: str = Field(min_length=1, max_length=64, description="Service that published the event.")
    traceparent: str | None = Field(default=None, description="W3C trace context of the producing span.")
    payload: P

    @classmethod
    def wrap(
        cls,
        payload: P,
        *,
        event_id: str,
        source: str,
        occurred_at: datetime,
        traceparent: str | None = None,
    ) -> Envelope[P]:
        """Wrap ``payload`` with its own event type."""
        envelope_type: Any = Envelope[type(payload)]  # type: ignore[misc]
        wrapped: Envelope[P] = envelope_type(
            event_id=event_id,
            event_type=payload.EVENT_TYPE,
            occurred_at=occurred_at,
            source=source,
            traceparent=traceparent,
            payload=payload,
        )
        return wrapped


def event_types() -> dict[str, type[Event]]:
    """Every registered event type and its class (a copy)."""
    return dict(_REGISTRY)


def event_class(event_type: str) -> type[Event]:
    """The class registered for ``event_type``.

    Raises:
        KeyError: no event of that type exists in this release of the contracts.

    """
    try:
        return _REGISTRY[event_type]
    except KeyError:
        raise KeyError(f"unknown event type {event_type!r}") from None
