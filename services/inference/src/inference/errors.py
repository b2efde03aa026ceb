"""Errors the gateway raises on purpose, and the one table of their HTTP statuses.

The errors know no transport: REST answers with :func:`http_status`, gRPC maps the same
status to a gRPC code (``grpc_server.py``), the Kafka consumer puts it in the answer event.
"""

from __future__ import annotations


class InferenceError(Exception):
    """Root of every error this service raises on purpose."""

    code = "inference_error"


class InvalidInput(InferenceError):
    """The request's tensors or features are malformed or do not match the model's signature."""

    code = "invalid_input"


class ModelNotFound(InferenceError):
    """No rollout exists for the model, or the backend does not know the model or version."""

    code = "model_not_found"


class Unauthorized(InferenceError):
    """An operator route was called without the operator token."""

    code = "unauthorized"


class RolloutConflict(InferenceError):
    """The rollout changed since the caller read it (``expected_revision`` did not match)."""

    code = "rollout_conflict"


class Overloaded(InferenceError):
    """Too many requests in flight, or the backend's queue is full: retry after a pause."""

    code = "overloaded"


class BackendUnavailable(InferenceError):
    """Triton cannot be reached and no fallback is configured (or the fallback failed too)."""

    code = "backend_unavailable"


class BreakerOpen(BackendUnavailable):
    """Triton was skipped: its circuit breaker is open after calls that got no answer, and no fallback is set."""

    code = "breaker_open"


class VersionUnavailable(InferenceError):
    """The routing table names a version that Triton has not loaded (or not made ready), and no fallback serves it.

    The server's state, not the caller's error: the version is approved, the caller may retry.
    """

    code = "version_unavailable"


class BackendTimeout(InferenceError):
    """Triton did not answer within the configured timeout."""

    code = "backend_timeout"


class BackendFailed(InferenceError):
    """Triton answered with an internal error while running the model."""

    code = "backend_failed"


class RegistryUnavailable(InferenceError):
    """The model registry (the only writer of aliases) did not answer, or answered with a server error."""

    code = "registry_unavailable"


class RegistryRefused(InferenceError):
    """The model registry refused an alias change (bad token or role, unknown version, invalid change)."""

    code = "registry_refused"


HTTP_STATUS: tuple[tuple[type[InferenceError], int], ...] = (
    (InvalidInput, 400),
    (Unauthorized, 401),
    (ModelNotFound, 404),
    (RolloutConflict, 409),
    (Overloaded, 429),
    (BackendFailed, 502),
    (RegistryRefused, 502),
    (RegistryUnavailable, 503),
    (BackendUnavailable, 503),
    (VersionUnavailable, 503),
    (BackendTimeout, 504),
)
"""The HTTP status of each error (most specific class first)."""


def http_status(exc: BaseException) -> int:
    """The HTTP status that answers ``exc`` (500 for anything not raised on purpose)."""
    for cls, code in HTTP_STATUS:
        if isinstance(exc, cls):
            return code
    return 400 if isinstance(exc, InferenceError) else 500
