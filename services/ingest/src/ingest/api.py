"""HTTP adapter: event and dataset-spec endpoints, health, readiness and metrics.

Event bodies are read by hand (not by FastAPI's body parsing) so that size limits apply while
reading, every row gets its own verdict, and even an unreadable body leaves a dead letter.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from confluent_kafka import KafkaException
from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from schemas.dataset import DatasetSpec
from schemas.deadletter import Problem

from ingest import metrics
from ingest.bodies import Checked, TooLarge, decode_batch, decode_single, read_limited
from ingest.deps import CatalogueDep, ProducerDep, ServiceDep, SettingsDep
from ingest.errors import (
    BadRequest,
    BrokerUnavailable,
    IngestError,
    Overloaded,
    PayloadTooLarge,
    Rejected,
    SpecConflict,
    UnknownDataset,
    UnsupportedMediaType,
)
from ingest.service import TOPICS, IngestResult, IngestService
from ingest.settings import Settings
from ingest.specs import RegisteredSpec
from ingest.validation import Kind

router = APIRouter()

# The one mapping of domain errors to HTTP statuses (most specific class first).
STATUS: tuple[tuple[type[IngestError], int], ...] = (
    (UnknownDataset, 404),
    (SpecConflict, 409),
    (UnsupportedMediaType, 415),
    (PayloadTooLarge, 413),
    (BadRequest, 400),
    (Rejected, 422),
    (Overloaded, 429),
    (BrokerUnavailable, 503),
)


def status_of(exc: BaseException) -> int:
    """The HTTP status that answers ``exc``."""
    for cls, code in STATUS:
        if isinstance(exc, cls):
            return code
    return 400 if isinstance(exc, IngestError) else 500


async def on_ingest_error(request: Request, exc: Exception) -> JSONResponse:
    """Answer a domain error: what went wrong, what to do, and for partial batches what was kept."""
    assert isinstance(exc, IngestError)
    code, body, headers = refusal(exc, request.app.state.settings)
    return JSONResponse(body, status_code=code, headers=headers)


def refusal(exc: IngestError, settings: Settings) -> tuple[int, dict[str, Any], dict[str, str]]:
    """The status, body and headers that answer ``exc`` (the one mapping for every route)."""
    code = status_of(exc)
    body: dict[str, Any] = {"error": getattr(exc, "code", None) or _snake(type(exc).__name__), "message": str(exc)}
    headers: dict[str, str] = {}
    if isinstance(exc, Rejected):
        body |= {
            "total": exc.total,
            "accepted": len(exc.accepted),
            "rejected": exc.total - len(exc.accepted),
            "accepted_event_ids": exc.accepted,
            "problems": [p.model_dump() for p in exc.problems],
        }
    if isinstance(exc, Overloaded | BrokerUnavailable):
        headers["Retry-After"] = str(settings.retry_after_s)
        body["accepted_event_ids"] = exc.accepted
        if isinstance(exc, BrokerUnavailable):
            body["failed_event_ids"] = exc.failed
    return code, body, headers


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


class EventAccepted(BaseModel):
    """A single event, durably in Kafka."""

    event_id: str
    topic: str
    partition: int
    offset: int


class BatchAccepted(BaseModel):
    """Every event of a batch, durably in Kafka."""

    total: int
    accepted: int
    rejected: int = 0


class DatasetPublic(BaseModel):
    """A registered dataset spec."""

    spec: DatasetSpec
    revision: int
    registered_at: datetime


class DatasetsPublic(BaseModel):
    """Every registered dataset spec."""

    datasets: list[DatasetPublic]


class ErrorPublic(BaseModel):
    """Every refusal: a stable code, what went wrong and what to do; for batches, what was kept."""

    error: str = Field(description="Stable machine-readable reason, e.g. `unknown_dataset`, `rejected`.")
    message: str = Field(description="What went wrong and what to do about it.")
    total: int | None = Field(default=None, description="Events in the request (partly refused batches).")
    accepted: int | None = Field(default=None, description="Events published (partly refused batches).")
    rejected: int | None = Field(default=None, description="Events refused and dead-lettered.")
    accepted_event_ids: list[str] | None = Field(
        default=None, description="Ids of the events that are durably in Kafka: do not send them again.")
    failed_event_ids: list[str] | None = Field(default=None, description="Ids the broker did not store: resend.")
    problems: list[Problem] | None = Field(default=None, description="Every bad row and field.")


_WHY: dict[int, str] = {
    400: "the body is not readable (not JSON, not an array, a name mismatch)",
    404: "the dataset is not registered",
    409: "a different spec exists under the name",
    413: "the body or an event is over the configured limit",
    415: "the content type is not JSON (or NDJSON for batches)",
    422: "events or the spec failed validation: every bad row and field is named, the rows are dead-lettered "
         "and the valid ones of a batch were published (`accepted_event_ids`)",
    429: "the producer queue is full; retry after `Retry-After` seconds",
    503: "the broker did not acknowledge in time; retry the `failed_event_ids` after `Retry-After` seconds",
}


def refusals(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route can answer, each with :class:`ErrorPublic`."""
    return {code: {"model": ErrorPublic, "description": _WHY[code]} for code in codes}


EVENT_REFUSALS = refusals(400, 404, 413, 415, 422, 429, 503)


def _body_doc(kind: Kind, batch: bool) -> dict[str, Any]:
    model = "FeatureEventV1" if kind == "features" else "LabelEventV1"
    schema: dict[str, Any] = {"$ref": f"#/components/schemas/{model}"}
    content: dict[str, Any] = {"application/json": {"schema": {"type": "array", "items": schema} if batch else schema}}
    if batch:
        content["application/x-ndjson"] = {"schema": {"type": "string", "description": "one event per line"}}
    return {"requestBody": {"required": True, "content": content}}


async def _events(request: Request, kind: Kind, *, batch: bool, service: IngestService,
                  settings: Settings) -> IngestResult:
    return await publish_body(request.stream(), kind, batch=batch, service=service, settings=settings,
                              declared=request.headers.get("content-length"),
                              content_type=request.headers.get("content-type"))


async def publish_body(stream: AsyncIterator[bytes], kind: Kind, *, batch: bool, service: IngestService,
                       settings: Settings, declared: str | None, content_type: str | None) -> IngestResult:
    """Read one request body within its limit, validate its events and publish them.

    The whole of an event route after HTTP: the FastAPI routes and the batch routes'
    plain ASGI front (:mod:`ingest.batch_asgi`) both call it, so both answer the same way.

    Raises:
        IngestError: what the caller is told (see :data:`STATUS`).
    """
    endpoint = f"{kind}{'-batch' if batch else ''}"
    started = time.perf_counter()
    code = 500
    limit = settings.max_body_bytes if batch else settings.max_event_bytes
    try:
        try:
            body = await read_limited(stream, limit=limit, declared=declared)
            rows = (decode_batch(body, content_type, kind, max_events=settings.max_batch_events,
                                 compiled=service.batch_validator())
                    if batch else [decode_single(body, content_type, kind)])
        except TooLarge as exc:
            await service.refuse(kind, exc.prefix, reason=str(exc), size=exc.size)
            raise
        except BadRequest as exc:
            await service.refuse(kind, body, reason=str(exc))
            raise
        if isinstance(rows, Checked):
            metrics.BATCH_EVENTS.observe(len(rows.events))
            result = await service.publish_checked(kind, rows.events, rows.payloads, origin="http")
        else:
            metrics.BATCH_EVENTS.observe(len(rows))
            result = await service.ingest(kind, rows, origin="http")
        if result.problems:
            raise Rejected(
                f"{result.rejected_rows} of {result.total} events were refused and written to "
                f"{TOPICS[kind]}.dlq; the other {len(result.accepted)} were published",
                problems=result.problems, accepted=list(result.accepted), total=result.total,
            )
        code = 200
        return result
    except Exception as exc:
        code = status_of(exc)
        raise
    finally:
        metrics.PRODUCER_QUEUE.set(service.queue_length())
        metrics.REQUESTS.labels(endpoint, str(code)).inc()
        metrics.REQUEST_SECONDS.labels(endpoint).observe(time.perf_counter() - started)


@router.post("/v1/events", response_model=EventAccepted, tags=["events"], openapi_extra=_body_doc("features", False),
             responses=EVENT_REFUSALS)
async def post_event(request: Request, service: ServiceDep, settings: SettingsDep) -> EventAccepted:
    """Publish one feature event; answers once the broker acknowledged it."""
    result = await _events(request, "features", batch=False, service=service, settings=settings)
    a = result.where(0)
    return EventAccepted(event_id=a.event_id, topic=TOPICS["features"], partition=a.partition, offset=a.offset)


@router.post("/v1/events/batch", response_model=BatchAccepted, tags=["events"],
             openapi_extra=_body_doc("features", True), responses=EVENT_REFUSALS)
async def post_events(request: Request, service: ServiceDep, settings: SettingsDep) -> BatchAccepted:
    """Publish a batch of feature events (JSON array or NDJSON); invalid rows are dead-lettered."""
    result = await _events(request, "features", batch=True, service=service, settings=settings)
    return BatchAccepted(total=result.total, accepted=len(result.accepted))


@router.post("/v1/labels", response_model=EventAccepted, tags=["events"], openapi_extra=_body_doc("labels", False),
             responses=EVENT_REFUSALS)
async def post_label(request: Request, service: ServiceDep, settings: SettingsDep) -> EventAccepted:
    """Publish one label event."""
    result = await _events(request, "labels", batch=False, service=service, settings=settings)
    a = result.where(0)
    return EventAccepted(event_id=a.event_id, topic=TOPICS["labels"], partition=a.partition, offset=a.offset)


@router.post("/v1/labels/batch", response_model=BatchAccepted, tags=["events"],
             openapi_extra=_body_doc("labels", True), responses=EVENT_REFUSALS)
async def post_labels(request: Request, service: ServiceDep, settings: SettingsDep) -> BatchAccepted:
    """Publish a batch of label events (JSON array or NDJSON)."""
    result = await _events(request, "labels", batch=True, service=service, settings=settings)
    return BatchAccepted(total=result.total, accepted=len(result.accepted))


def _public(entry: RegisteredSpec) -> DatasetPublic:
    return DatasetPublic(spec=entry.spec, revision=entry.revision, registered_at=entry.registered_at)


@router.post("/v1/datasets", response_model=DatasetPublic, tags=["datasets"], status_code=status.HTTP_201_CREATED,
             responses={200: {"model": DatasetPublic, "description": "the identical spec was already registered"},
                        **refusals(409, 422, 503)})
async def create_dataset(spec: DatasetSpec, response: Response, catalogue: CatalogueDep,
                         producer: ProducerDep) -> DatasetPublic:
    """Register a dataset spec (201); the identical spec again is a no-op (200)."""
    entry, changed = await catalogue.register(spec, producer, replace=False)
    response.status_code = status.HTTP_201_CREATED if changed else status.HTTP_200_OK
    return _public(entry)


@router.put("/v1/datasets/{name}", response_model=DatasetPublic, tags=["datasets"],
            responses={201: {"model": DatasetPublic, "description": "a new dataset was registered"},
                       **refusals(400, 422, 503)})
async def replace_dataset(name: str, spec: DatasetSpec, response: Response, catalogue: CatalogueDep,
                          producer: ProducerDep) -> DatasetPublic:
    """Register or replace the spec of ``name``; the revision counts replacements."""
    if spec.name != name:
        raise BadRequest(f"the spec is named {spec.name!r} but the path names {name!r}", code="name_mismatch")
    existed = catalogue.get(name) is not None
    entry, changed = await catalogue.register(spec, producer, replace=True)
    response.status_code = status.HTTP_201_CREATED if changed and not existed else status.HTTP_200_OK
    return _public(entry)


@router.get("/v1/datasets", response_model=DatasetsPublic, tags=["datasets"])
async def list_datasets(catalogue: CatalogueDep) -> DatasetsPublic:
    """Every registered dataset spec."""
    return DatasetsPublic(datasets=[_public(e) for e in catalogue.all()])


@router.get("/v1/datasets/{name}", response_model=DatasetPublic, tags=["datasets"], responses=refusals(404))
async def get_dataset(name: str, catalogue: CatalogueDep) -> DatasetPublic:
    """The current spec of one dataset."""
    return _public(catalogue.entry(name))


@router.get("/healthz", tags=["operations"])
async def healthz() -> dict[str, str]:
    """Liveness: the process serves requests."""
    return {"status": "ok"}


@router.get("/readyz", tags=["operations"], responses={503: {"description": "not ready, with the reason"}})
async def readyz(catalogue: CatalogueDep, producer: ProducerDep, settings: SettingsDep) -> JSONResponse:
    """Readiness: the broker answers a metadata request and the dataset specs are loaded."""
    if not catalogue.loaded:
        return JSONResponse({"status": "unavailable", "reason": "dataset specs not loaded yet"}, status_code=503)
    try:
        await asyncio.to_thread(producer.list_topics, settings.readiness_timeout_s)
    except KafkaException as exc:
        return JSONResponse({"status": "unavailable", "reason": f"Kafka broker unreachable: {exc}"},
                            status_code=503)
    return JSONResponse({"status": "ready"})


@router.get("/metrics", tags=["operations"], response_class=Response)
async def metrics_endpoint(producer: ProducerDep) -> Response:
    """Prometheus metrics."""
    metrics.PRODUCER_QUEUE.set(producer.queue_length())
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

