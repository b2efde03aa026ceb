"""Errors the trainer raises on purpose.

Every :class:`TrainerError` that ends a retrain command carries the ``reason`` code of the
published ``training.training-failed.v1`` event; the HTTP boundary maps classes to statuses in
one table (:mod:`trainer.api`). Messages say what failed and what to do next.
"""

from __future__ import annotations

from schemas.training import TrainingFailureReason


class TrainerError(Exception):
    """Root of every error this service raises on purpose."""

    reason: TrainingFailureReason = "internal"


class InvalidCommand(TrainerError):
    """The command cannot be carried out as given (bad window, unknown model name form)."""

    reason: TrainingFailureReason = "invalid_command"


class UnknownDataset(TrainerError):
    """No spec is registered for the command's dataset."""

    reason: TrainingFailureReason = "unknown_dataset"


class EmptyWindow(TrainerError):
    """The window holds no feature events of the dataset."""

    reason: TrainingFailureReason = "empty_window"


class LabelsMissing(TrainerError):
    """Feature events were found, but none (or too few) of them have a label."""

    reason: TrainingFailureReason = "labels_missing"


class TooFewRows(TrainerError):
    """There are labelled rows, but too few to train and hold out a validation set."""

    reason: TrainingFailureReason = "too_few_rows"


class NanLoss(TrainerError):
    """The training loss became NaN or infinite."""

    reason: TrainingFailureReason = "nan_loss"


class BudgetExceeded(TrainerError):
    """The run would not fit the memory budget (the time budget only stops training early)."""

    reason: TrainingFailureReason = "budget_exceeded"


class ParityFailed(TrainerError):
    """The exported ONNX model does not reproduce the PyTorch outputs."""

    reason: TrainingFailureReason = "parity_failed"


class ChampionUnusable(TrainerError):
    """The current champion cannot be scored on the holdout (no input contract, unreadable artifact)."""

    reason: TrainingFailureReason = "champion_unusable"


class RegistryRefused(TrainerError):
    """The registry answered a request with a refusal (4xx)."""

    reason: TrainingFailureReason = "registry_refused"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RegistryUnavailable(TrainerError):
    """The registry could not be reached or failed (5xx, timeout)."""

    reason: TrainingFailureReason = "registry_unavailable"


class BrokerUnavailable(TrainerError):
    """The Kafka broker did not answer or did not acknowledge a record."""

    reason: TrainingFailureReason = "broker_unavailable"


class ServingUnavailable(TrainerError):
    """The serving engine (Triton) could not be reached for the serving parity check."""


class CommandNotFound(TrainerError):
    """No outcome is known for the command id (it is unknown, queued or still running)."""
