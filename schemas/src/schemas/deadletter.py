"""Dead-letter records: what could not be accepted, exactly why, and the original bytes."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.envelope import Event


class Problem(BaseModel):
    """One thing wrong with one input row."""

    model_config = ConfigDict(frozen=True)

    row: int | None = Field(default=None, description="0-based index of the row in its batch.")
    event_id: str | None = Field(default=None, description="The row's event id, when it had a readable one.")
    field: str = Field(description="Dotted path of the field, e.g. features.age; empty for the whole row.")
    message: str


class DeadLetterV1(Event):
    """An input refused by a service, kept with its reason so nothing is silently lost.

    Lives on ``<topic>.dlq`` where ``<topic>`` is the topic the input was bound for (HTTP
    input) or came from (Kafka input). ``payload`` is the original text, cut at the service's
    limit when larger (``payload_truncated``); ``payload_size`` is always the full size.
    """

    EVENT_TYPE: ClassVar[str] = "deadletter.dead-letter.v1"

    origin: Literal["http", "kafka"]
    topic: str = Field(description="Topic the input was bound for (http) or read from (kafka).")
    reason: str
    problems: list[Problem] = Field(default_factory=list)
    payload: str
    payload_truncated: bool = False
    payload_size: int = Field(ge=0)
    partition: int | None = None
    offset: int | None = None
    key: str | None = None
    received_at: AwareDatetime
