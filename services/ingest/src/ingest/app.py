"""The ingest application: ``create_app(settings)`` and the lifespan that owns every client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from schemas.ingest import FeatureEventV1, LabelEventV1
from schemas.topics import CATALOGUE, FEATURES_RAW, LABELS_RAW
from tributary_kit.admin import ensure_topics
from tributary_kit.lag import reporting_lag
from tributary_kit.logs import configure_logging
from tributary_kit.telemetry import build_tracer_provider

from ingest import __version__, api, batch_asgi, metrics
from ingest.consumer import RawValidator
from ingest.errors import IngestError
from ingest.kafka import build_producer, build_raw_consumer
from ingest.service import IngestService
from ingest.settings import Settings
from ingest.specs import SpecCatalogue

log = logging.getLogger(__name__)


def create_app_from_env() -> FastAPI:
    """The app with settings from the environment: what each worker process of ``INGEST_WORKERS`` runs."""
    settings = Settings()
    configure_logging("ingest", settings.log_level, json_lines=settings.log_json)
    return create_app(settings)


def create_app(settings: Settings) -> FastAPI:
    """The ingest HTTP app; nothing connects until the lifespan starts."""
    provider = build_tracer_provider("ingest", __version__, otlp_endpoint=settings.otlp_endpoint)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.create_topics:
            await asyncio.to_thread(ensure_topics, settings.kafka_bootstrap, CATALOGUE.values(),
                                    timeout_s=settings.startup_timeout_s)
        producer = build_producer(settings)
        catalogue = SpecCatalogue(settings.kafka_bootstrap)
        raw: RawValidator | None = None
        raw_task: asyncio.Task[None] | None = None
        try:
            await asyncio.to_thread(catalogue.load, settings.startup_timeout_s)
            service = IngestService(specs=catalogue.compiled, producer=producer,
                                    tracer=provider.get_tracer("ingest"), compiled=catalogue.batch_validator)
            app.state.settings = settings
            app.state.producer = producer
            app.state.catalogue = catalogue
            app.state.service = service
            if settings.consume_raw:
                raw = RawValidator(build_raw_consumer(settings), service, batch_size=settings.raw_batch_size,
                                   max_record_bytes=settings.max_event_bytes)
                raw_task = asyncio.create_task(raw.run(), name="ingest-raw-validator")
                app.state.raw_validator = raw
            log.info("ingest ready", extra={"bootstrap": settings.kafka_bootstrap})
            lag_groups = {settings.raw_group_id: [FEATURES_RAW, LABELS_RAW]} if settings.consume_raw else {}
            async with reporting_lag(settings.kafka_bootstrap, lag_groups):
                yield
        finally:
            if raw is not None and raw_task is not None:
                raw.stop()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(raw_task, timeout=10)
            catalogue.close()
            await asyncio.to_thread(producer.close, settings.delivery_timeout_s)
            provider.shutdown()
            metrics.worker_exited(os.getpid())

    app = FastAPI(title="Tributary ingest", version=__version__, lifespan=lifespan,
                  description="Validates feature and label events against dataset specs and publishes "
                              "them to Kafka.")
    app.include_router(api.router)
    app.add_exception_handler(IngestError, api.on_ingest_error)
    app.add_exception_handler(RequestValidationError, _on_invalid_request)
    # No spans per ASGI receive/send message: a 1000-event body arrives in several chunks, and each
    # span costs about 16 µs of CPU for nothing the request span does not already say.
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, excluded_urls="healthz,readyz,metrics",
                                       exclude_spans=["receive", "send"])
    batch_asgi.install(app, provider.get_tracer("ingest"))  # the batch routes skip FastAPI's stack
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


async def _on_invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [{"field": ".".join(str(p) for p in e["loc"][1:]), "message": e["msg"]} for e in exc.errors()]
    message = "; ".join(f"{p['field'] or 'body'}: {p['message']}" for p in problems[:10])
    return JSONResponse({"error": "invalid_request", "message": message, "problems": problems}, status_code=422)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated OpenAPI, plus the event schemas the hand-read bodies refer to."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    for model in (FeatureEventV1, LabelEventV1):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    app.openapi_schema = doc
    return doc
