"""HTTP routes: drift status, recent reports, health and metrics; the one error-to-status table."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from schemas.drift import DriftReportV1

from drift.deps import ServiceDep
from drift.errors import DriftError, ReferenceUnavailable, ReplayError, ReportNotFound, UnknownDataset

router = APIRouter()

_STATUS: dict[type[DriftError], int] = {UnknownDataset: 404, ReportNotFound: 404, ReferenceUnavailable: 502,
                                        ReplayError: 400}


class ErrorPublic(BaseModel):
    """Every refusal of a :class:`DriftError`: what went wrong and what to do, and its stable code."""

    error: str = Field(description="What went wrong and what to do about it.")
    code: str = Field(description="Stable machine-readable reason: the error's class, e.g. `UnknownDataset`.")


class ReadinessPublic(BaseModel):
    """Readiness, with the reason when the stream stopped consuming."""

    status: Literal["ready", "starting", "crashed"]
    reason: str | None = None
    role: Literal["active", "standby"] | None = Field(
        default=None, description="This worker's role in the consumer group: `active` consumes every input and holds "
                                  "the state; `standby` holds nothing and takes over when the active worker leaves "
                                  "the group (unset: no assignment yet).")


def role_of(app: Any) -> Literal["active", "standby"] | None:
    """The role the group's last assignment gave this worker (None before the first)."""
    role = getattr(getattr(app, "assignor", None), "role", None)
    return role if role in ("active", "standby") else None


_WHY: dict[int, str] = {404: "no such dataset or report (the `code` says which)",
                        502: "the registry did not give the champion's reference statistics",
                        400: "the request cannot be served as asked"}


def refusals(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route can answer, each with :class:`ErrorPublic`."""
    return {code: {"model": ErrorPublic, "description": _WHY[code]} for code in codes}


async def on_drift_error(request: Request, exc: Exception) -> JSONResponse:
    """The HTTP boundary of :class:`DriftError`."""
    assert isinstance(exc, DriftError)
    body = ErrorPublic(error=str(exc), code=type(exc).__name__)
    return JSONResponse(body.model_dump(), status_code=_STATUS.get(type(exc), 400))


class DriftStatusPublic(BaseModel):
    """Every monitored dataset: window progress, reference, policy state, last report."""

    datasets: list[dict[str, Any]]
    role: Literal["active", "standby"] | None = Field(
        default=None, description="This worker's role: a `standby` holds no state, so it lists no datasets; ask the "
                                  "active worker.")


class DriftReportsPublic(BaseModel):
    """Recent reports of a dataset, newest first."""

    data: list[DriftReportV1]
    count: int


@router.get("/v1/drift/status")
async def drift_status(service: ServiceDep, request: Request) -> DriftStatusPublic:
    """Status of every dataset the drift service has seen (on the active worker; a standby lists none)."""
    faust_app = getattr(request.app.state, "faust", None)
    return DriftStatusPublic.model_validate({**service.status(),
                                             "role": role_of(faust_app) if faust_app is not None else None})


@router.get("/v1/drift/reports", responses=refusals(404))
async def drift_reports(service: ServiceDep, dataset: str,
                        limit: Annotated[int, Query(ge=1, le=500)] = 20) -> DriftReportsPublic:
    """The most recent reports of ``dataset``, newest first."""
    data = service.reports(dataset, limit)
    return DriftReportsPublic(data=data, count=len(data))


@router.get("/v1/drift/reports/{report_id}", responses=refusals(404))
async def drift_report(service: ServiceDep, report_id: str) -> DriftReportV1:
    """One recent report."""
    return service.report(report_id)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness."""
    return {"status": "ok"}


@router.get("/readyz", response_model=ReadinessPublic,
            responses={503: {"model": ReadinessPublic, "description": "starting (table recovering, rebalance) or "
                                                                       "crashed (stopped consuming), with the reason"}})
async def readyz(request: Request) -> JSONResponse:
    """Ready when the stream app is running, its table is recovered and nothing of it has crashed.

    A standby worker (an empty assignment: another worker is active) is ready too, and says so
    in ``role``: it is healthy and in the group, waiting to take over.

    A crashed agent or consumer (an undecodable batch, a lost coordinator) stops consumption
    while the process lives on; readiness says so instead of answering 200 over a dead stream.
    """
    app = request.app.state.faust
    if not app.started:
        return JSONResponse({"status": "starting"}, status_code=503)
    crashed = [name for name, service in (("app", app), ("consumer", app.consumer),
                                          *((f"agent {n}", a) for n, a in app.agents.items()))
               if service.crashed]
    if crashed:
        return JSONResponse({"status": "crashed", "reason": f"stopped consuming: {', '.join(crashed)} crashed"},
                            status_code=503)
    ready = not app.rebalancing and app.tables.recovery.completed.is_set()
    body = ReadinessPublic(status="ready" if ready else "starting", role=role_of(app))
    return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
async def metrics(request: Request) -> Response:
    """Prometheus exposition; the first scrape after the table's recovery restores the state gauges.

    Again after each assignment that makes this worker active (a standby taking over holds the
    state only from then on); the assignment's epoch tells them apart.
    """
    app = request.app.state.faust
    assignor = getattr(app, "assignor", None)
    epoch = getattr(assignor, "epoch", 0) if getattr(assignor, "role", "active") == "active" else None
    if (epoch is not None and getattr(request.app.state, "gauges_restored", None) != epoch
            and not getattr(app, "rebalancing", False) and app.tables.recovery.completed.is_set()):
        request.app.state.service.restore_gauges()
        request.app.state.gauges_restored = epoch
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
