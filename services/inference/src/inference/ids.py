"""Ids the gateway makes: request ids for callers that send none, and event ids."""

from __future__ import annotations

import itertools
import os
import uuid


class RequestIds:
    """Request ids for callers that send none: a random 64-bit process prefix and a counter.

    Unique across replicas and restarts like a UUID (the prefix is drawn at start-up), without
    drawing 16 random bytes per request.

    >>> ids = RequestIds()
    >>> a, b = ids.next(), ids.next()
    >>> a != b and a.split("-")[0] == b.split("-")[0] and len(a) <= 128
    True
    """

    def __init__(self) -> None:
        self._prefix = f"{int.from_bytes(os.urandom(8), 'big'):016x}"
        self._counter = itertools.count(1)

    def next(self) -> str:
        """A new id."""
        return f"{self._prefix}-{next(self._counter):x}"


_EVENTS = uuid.UUID("6f1c2f0e-5b7a-4a39-9d61-0c1f3a8e2b47")
"""Namespace of the gateway's deterministic prediction event ids (a constant; never change it)."""


def prediction_event_id(request_id: str, model: str, version: int, route: str) -> str:
    """The event id of the prediction ``model`` v``version`` made on ``route`` for ``request_id``.

    Deterministic, so a request answered again (a Kafka request redelivered after a crash) yields
    an event with the same id, which consumers deduplicate; a request served again by another
    version or route is another prediction with another id.

    >>> a = prediction_event_id("r-1", "credit", 1, "champion")
    >>> a == prediction_event_id("r-1", "credit", 1, "champion"), len(a)
    (True, 36)
    >>> a != prediction_event_id("r-1", "credit", 2, "canary")
    True
    """
    return str(uuid.uuid5(_EVENTS, f"{request_id}\x1f{model}\x1f{version}\x1f{route}"))
