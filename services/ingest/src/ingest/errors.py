"""Errors the ingest service raises on purpose; the HTTP boundary maps each to a status."""

from __future__ import annotations

from schemas.deadletter import Problem


class IngestError(Exception):
    """Root of every error this service raises on purpose."""


class UnknownDataset(IngestError):
    """No spec is registered under the dataset name."""


class SpecConflict(IngestError):
    """A different spec is already registered under the name (replace it with PUT)."""


class BadRequest(IngestError):
    """The request as a whole is unusable (not JSON, wrong content type, empty)."""

    def __init__(self, message: str, *, code: str = "bad_request") -> None:
        super().__init__(message)
        self.code = code


class UnsupportedMediaType(BadRequest):
    """The body's content type is not one the endpoint reads."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="unsupported_media_type")


class PayloadTooLarge(BadRequest):
    """The body or the batch is over the configured limit."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="payload_too_large")


class Overloaded(IngestError):
    """The producer queue is full: the caller should retry after a pause. Nothing was lost."""

    def __init__(self, message: str, *, accepted: list[str]) -> None:
        super().__init__(message)
        self.accepted = accepted


class BrokerUnavailable(IngestError):
    """The broker did not acknowledge some records in time; they must be sent again."""

    def __init__(self, message: str, *, accepted: list[str], failed: list[str]) -> None:
        super().__init__(message)
        self.accepted = accepted
        self.failed = failed


class Rejected(IngestError):
    """Some rows were invalid; they went to the dead-letter topic, the valid ones were published."""

    def __init__(self, message: str, *, problems: list[Problem], accepted: list[str], total: int) -> None:
        super().__init__(message)
        self.problems = problems
        self.accepted = accepted
        self.total = total
