"""Errors the drift service raises on purpose; the HTTP boundary maps each to a status (``api.py``)."""

from __future__ import annotations


class DriftError(Exception):
    """Root of every error this service raises on purpose."""


class UnknownDataset(DriftError):
    """The drift service has seen no event of that dataset (check the name, or wait for traffic)."""


class ReportNotFound(DriftError):
    """No recent report has that id (only the last reports per dataset are kept)."""


class ReferenceUnavailable(DriftError):
    """The registry did not give the champion's reference statistics."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ReplayError(DriftError):
    """A replay could not read the window it was asked for (bad bounds, unknown topic)."""
