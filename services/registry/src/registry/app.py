"""The registry's HTTP application: ``create_app(settings)`` and the lifespan that owns every client.

The lifespan migrates the database, creates the event topics, builds the store, the artifact
store, the Kafka producer, the Triton client and the outbox drainer, repairs the Triton
repository, and on shutdown stops the drainer, flushes the producer and closes the rest.
Nothing connects at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version as package_version

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from schemas.topics import topic
from starlette.concurrency import run_in_threadpool
from tributary_kit.admin import ensure_topics
from tributary_kit.producer import AsyncProducer
from tributary_kit.telemetry import build_tracer_provider

from registry import api, errors
from registry.db import SqlModelStore, make_engine
from registry.migrations import upgrade_to_head
from registry.outbox import OutboxDrainer
from registry.sandbox import SandboxLimits
from registry.service import EventTopics, Limits, RegistryService
from registry.settings import Settings
from registry.signing import SigningKeys
from registry.storage import LocalArtifactStore
from registry.triton_repo import TritonControl, TritonRepository
from schemas import topics

log = logging.getLogger(__name__)

STATUS: dict[type[errors.RegistryError], int] = {
    errors.InvalidName: 400,
    errors.InvalidRequest: 400,
    errors.NotAuthenticated: 401,
    errors.PermissionDenied: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.AliasChanged: 412,
    errors.ArtifactTooLarge: 413,
    errors.InvalidModel: 422,
    errors.SignatureRequired: 422,
    errors.ArtifactSignatureInvalid: 422,
    errors.TritonError: 502,
    errors.StorageError: 503,
    errors.InsufficientStorage: 507,
    errors.ArtifactCorrupt: 500,
}
"""HTTP status of each domain error (the most specific class listed wins)."""


def status_of(exc: errors.RegistryError) -> int:
    """The HTTP status for ``exc``: its nearest class in :data:`STATUS`, else 400."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


async def on_registry_error(request: Request, exc: Exception) -> JSONResponse:
    """Answer a domain error as ``{"error": message, "code": code}`` with its status."""
    assert isinstance(exc, errors.RegistryError)
    status = status_of(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": str(exc), "code": exc.code}, status_code=status, headers=headers)


def create_app(settings: Settings) -> FastAPI:
    """The registry application for ``settings``."""
    service_version = package_version("tributary-registry")
    tracer_provider = build_tracer_provider("registry", service_version, otlp_endpoint=settings.otlp_endpoint)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if settings.migrate_on_start:
            await run_in_threadpool(upgrade_to_head, settings.db_url)
        if settings.create_topics:
            # Catalogue specs (partitions, compaction) under the configured names.
            specs = [
                topic(topics.MODEL_REGISTERED).model_copy(update={"name": settings.model_registered_topic}),
                topic(topics.ROLLOUT_CHANGED).model_copy(update={"name": settings.rollout_changed_topic}),
            ]
            await run_in_threadpool(ensure_topics, settings.kafka_bootstrap, specs)
        artifacts = LocalArtifactStore(settings.artifact_root)
        swept = await run_in_threadpool(artifacts.sweep_temporary, settings.stale_upload_s)
        if swept:
            log.warning("removed uploads left by an interrupted process", extra={"files": swept})
        engine = make_engine(settings.db_url)
        store = SqlModelStore(engine)
        orphans = await run_in_threadpool(artifacts.sweep_unreferenced, await run_in_threadpool(
            store.referenced_artifacts), settings.stale_upload_s)
        if orphans:
            log.warning("removed stored artifacts no version refers to (left by an interrupted upload)",
                        extra={"sha256": orphans})
        producer = AsyncProducer({"bootstrap.servers": settings.kafka_bootstrap, "client.id": "registry"})
        drainer = OutboxDrainer(store, producer, batch_size=settings.outbox_batch_size,
                                poll_interval_s=settings.outbox_poll_interval_s)
        admin = settings.triton_admin_secret
        triton = (TritonControl(settings.triton_url, timeout_s=settings.triton_timeout_s,
                                headers={settings.triton_admin_header: admin.get_secret_value()} if admin else None)
                  if settings.triton_url else None)
        service = RegistryService(
            store=store,
            artifacts=artifacts,
            limits=Limits(max_artifact_bytes=settings.max_artifact_bytes, min_opset=settings.min_opset,
                          max_opset=settings.max_opset),
            topics=EventTopics(model_registered=settings.model_registered_topic,
                               rollout_changed=settings.rollout_changed_topic),
            triton_repo=TritonRepository(settings.triton_root, max_batch_size=settings.triton_max_batch_size,
                                         max_queue_delay_us=settings.triton_max_queue_delay_us,
                                         max_queue_size=settings.triton_max_queue_size,
                                         queue_timeout_us=settings.triton_queue_timeout_us),
            triton=triton,
            notify=drainer.waker(),
            signing=SigningKeys.from_dir(settings.signing_keys_dir, required=settings.require_signature),
            sandbox=SandboxLimits(memory_bytes=settings.validation_memory_mb * 1024 * 1024,
                                  cpu_s=settings.validation_cpu_s, timeout_s=settings.validation_timeout_s)
            if settings.validation_sandbox else None,
            preflight=settings.triton_preflight,
        )
        app.state.service = service
        app.state.producer = producer
        app.state.drainer = drainer
        await run_in_threadpool(service.sync_all_triton)
        task = asyncio.create_task(drainer.run(), name="registry-outbox-drainer")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            # One last round so events of the final requests leave now; what is not
            # acknowledged stays in the outbox for the next start.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(drainer.drain_once(), timeout=settings.kafka_flush_timeout_s)
            await run_in_threadpool(producer.close, settings.kafka_flush_timeout_s)
            if triton is not None:
                triton.close()
            engine.dispose()
            tracer_provider.shutdown()
            # Drop the clients so librdkafka's instance is destroyed now, not when the app is.
            app.state.service = app.state.producer = app.state.drainer = None

    app = FastAPI(title="registry", version=service_version, lifespan=lifespan)
    app.state.settings = settings
    app.include_router(api.router)
    app.add_exception_handler(errors.RegistryError, on_registry_error)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False, response_model=None)
    async def readyz(request: Request) -> dict[str, str] | JSONResponse:
        service: RegistryService = request.app.state.service
        producer: AsyncProducer = request.app.state.producer
        try:
            await run_in_threadpool(service.store.ping)
            await run_in_threadpool(producer.list_topics, 2.0)
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "error": str(exc)}, status_code=503)
        return {"status": "ready"}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    FastAPIInstrumentor.instrument_app(app, tracer_provider=tracer_provider,
                                       excluded_urls="/healthz,/readyz,/metrics")
    return app
