"""HTTP adapter: issue manual retrain commands, read outcomes, health, readiness and metrics."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from schemas.envelope import DatasetName, EventId
from schemas.training import OffsetRange, RetrainCommandV1, TrainingCompletedV1, TrainingFailedV1, TrainingWindow

from trainer.deps import LedgerDep, ProducerDep, SettingsDep
from trainer.errors import (
    BrokerUnavailable,
    CommandNotFound,
    InvalidCommand,
    RegistryRefused,
    RegistryUnavailable,
    TrainerError,
    UnknownDataset,
)
from trainer.kafka import event_bytes
from trainer.service import new_command

router = APIRouter()

# The one mapping of domain errors to HTTP statuses (most specific class first).
STATUS: tuple[tuple[type[TrainerError], int], ...] = (
    (CommandNotFound, 404),
    (UnknownDataset, 404),
    (InvalidCommand, 400),
    (RegistryRefused, 502),
    (RegistryUnavailable, 503),
    (BrokerUnavailable, 503),
)


def status_of(exc: TrainerError) -> int:
    """The HTTP status that answers ``exc``."""
    for cls, code in STATUS:
        if isinstance(exc, cls):
            return code
    return 400


async def on_trainer_error(request: Request, exc: Exception) -> JSONResponse:
    """Answer a domain error with what went wrong and what to do."""
    assert isinstance(exc, TrainerError)
    return JSONResponse({"error": exc.reason if exc.reason != "internal" else type(exc).__name__,
                         "message": str(exc)}, status_code=status_of(exc))


class ErrorPublic(BaseModel):
    """Every refusal and failure: a short reason and what to do."""

    error: str = Field(description="The reason, e.g. `CommandNotFound`.")
    message: str = Field(description="What went wrong and what to do about it.")


class NotReady(BaseModel):
    """Readiness refused, with the reason."""

    status: Literal["unavailable"]
    reason: str


class CommandCreate(BaseModel):
    """A manual retrain command; without times the whole retained stream is used."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,127}$")
    dataset: DatasetName
    start_time: AwareDatetime | None = None
    end_time: AwareDatetime | None = None
    offsets: list[OffsetRange] = Field(default_factory=list,
                                       description="Exact ranges to replay (e.g. a model's recorded window).")
    command_id: EventId | None = Field(default=None, description="Idempotency key; generated when absent.")
    requested_by: str = Field(default="api", min_length=1, max_length=128)
    note: str = ""


class CommandAccepted(BaseModel):
    """A command durably queued on the command topic."""

    command_id: str
    topic: str
    partition: int
    offset: int


class CommandPublic(BaseModel):
    """What a command came to."""

    command_id: str
    status: Literal["completed", "failed"]
    outcome: TrainingCompletedV1 | TrainingFailedV1


MAX_PARTITION = 2**31 - 1
MAX_OFFSET = 2**63 - 1


@router.post("/v1/commands", status_code=202, tags=["commands"], responses={
    400: {"model": ErrorPublic, "description": "the window is invalid"},
    503: {"model": ErrorPublic, "description": "the broker did not store the command; retry"}})
async def create_command(body: CommandCreate, producer: ProducerDep, settings: SettingsDep) -> CommandAccepted:
    """Queue a manual retrain command; answers once the broker stored it. Poll ``GET /v1/commands/{id}``."""
    try:
        window = TrainingWindow(start_time=body.start_time, end_time=body.end_time, offsets=body.offsets)
    except ValueError as exc:
        raise InvalidCommand(f"invalid window: {exc}") from exc
    for r in body.offsets:   # Kafka's own bounds (int32 partitions, int64 offsets): beyond them nothing exists
        if r.partition > MAX_PARTITION or r.end_offset > MAX_OFFSET:
            raise InvalidCommand(f"invalid window: partition {r.partition} or offsets {r.start_offset}..{r.end_offset} "
                                 f"of {r.topic!r} are beyond Kafka's range (partition <= {MAX_PARTITION}, "
                                 f"offset <= {MAX_OFFSET})")
    command = new_command(model_name=body.model_name, dataset=body.dataset, reason="manual",
                          requested_by=body.requested_by, window=window, command_id=body.command_id, note=body.note)
    return await publish_command(command, producer, settings.command_topic)


async def publish_command(command: RetrainCommandV1, producer: Any, topic: str) -> CommandAccepted:
    """Publish ``command`` (keyed by model name) and wait for the broker.

    Raises:
        BrokerUnavailable: the broker did not store it.

    """
    delivery = await producer.send(topic, event_bytes(command), key=command.model_name)
    if not delivery.ok:
        raise BrokerUnavailable(f"the broker did not store the command: {delivery.error}; retry")
    return CommandAccepted(command_id=command.command_id, topic=topic, partition=delivery.partition,
                           offset=delivery.offset)


@router.get("/v1/commands/{command_id}", tags=["commands"], responses={
    404: {"model": ErrorPublic, "description": "no outcome yet: the command is unknown, queued or running"}})
async def get_command(command_id: str, ledger: LedgerDep) -> CommandPublic:
    """The outcome of a command; 404 while it is unknown, queued or running."""
    outcome = ledger.get(command_id)
    if outcome is None:
        raise CommandNotFound(f"no outcome for command {command_id!r} yet: it is unknown, queued or running; "
                              "try again later")
    status: Literal["completed", "failed"] = "completed" if isinstance(outcome, TrainingCompletedV1) else "failed"
    return CommandPublic(command_id=command_id, status=status, outcome=outcome)


@router.get("/healthz", tags=["health"])
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", tags=["health"],
            responses={503: {"model": NotReady, "description": "the broker does not answer"}})
async def readyz(producer: ProducerDep, settings: SettingsDep) -> JSONResponse:
    """Readiness: the broker answers a metadata request."""
    try:
        await asyncio.to_thread(producer.list_topics, 2.0)
    except Exception as exc:  # librdkafka's KafkaException or a timeout
        return JSONResponse({"status": "unavailable", "reason": str(exc)}, status_code=503)
    return JSONResponse({"status": "ready"})


@router.get("/metrics", tags=["health"], response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
async def prometheus_metrics() -> Response:
    """Prometheus metrics."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
