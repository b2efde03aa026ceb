"""Dead-letter records: build one from anything refused, keeping the original text and reason."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

from schemas.deadletter import DeadLetterV1, Problem
from schemas.envelope import Envelope

MAX_PAYLOAD_CHARS = 256 * 1024
"""Original payloads are cut at this many characters so a dead letter always fits a record."""


def dead_letter(
    *,
    origin: Literal["http", "kafka"],
    topic: str,
    reason: str,
    payload: bytes | str,
    source: str,
    problems: Sequence[Problem] = (),
    partition: int | None = None,
    offset: int | None = None,
    key: str | None = None,
    traceparent: str | None = None,
    size: int | None = None,
) -> Envelope[DeadLetterV1]:
    """An enveloped dead-letter record for ``payload``, refused for ``reason``.

    ``size`` is the full size of the original when ``payload`` is only its beginning.
    """
    text = payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else payload
    now = datetime.now(UTC)
    record = DeadLetterV1(
        origin=origin,
        topic=topic,
        reason=reason,
        problems=list(problems),
        payload=text[:MAX_PAYLOAD_CHARS],
        payload_truncated=len(text) > MAX_PAYLOAD_CHARS or (size is not None and size > len(payload)),
        payload_size=len(payload) if size is None else size,
        partition=partition,
        offset=offset,
        key=key,
        received_at=now,
    )
    return Envelope.wrap(record, event_id=str(uuid.uuid4()), source=source, occurred_at=now,
                         traceparent=traceparent)
