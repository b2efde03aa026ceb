"""The drift application: ``create_app(settings)``; its lifespan runs the Faust stream on the same loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from faust.contrib.asgi import faust_app_running
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from schemas.topics import CATALOGUE
from tributary_kit.admin import ensure_topics
from tributary_kit.lag import reporting_lag
from tributary_kit.telemetry import build_tracer_provider

from drift import __version__, api, metrics
from drift.errors import DriftError
from drift.reference import RegistryClient
from drift.settings import Settings
from drift.stream import INPUT_TOPICS, build_stream

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    """The drift HTTP app; the stream starts (and nothing connects) only in the lifespan."""
    provider = build_tracer_provider("drift", __version__, otlp_endpoint=settings.otlp_endpoint)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.create_topics:
            await asyncio.to_thread(ensure_topics, settings.kafka_bootstrap, CATALOGUE.values(),
                                    timeout_s=settings.startup_timeout_s)
        registry = RegistryClient(settings.registry_url, timeout_s=settings.registry_timeout_s)
        stream, service = build_stream(settings, registry=registry, tracer=provider.get_tracer("drift"))
        app.state.service = service
        app.state.faust = stream
        metrics.RECOVERY_OBJECTIVE.set(settings.recovery_objective_s)
        try:
            async with (faust_app_running(stream, stop_timeout=30),
                        reporting_lag(settings.kafka_bootstrap, {settings.app_id: INPUT_TOPICS})):
                log.info("drift ready", extra={"bootstrap": settings.kafka_bootstrap})
                yield
        finally:
            await registry.close()
            provider.shutdown()

    app = FastAPI(title="Tributary drift", version=__version__, lifespan=lifespan,
                  description="Streaming drift tests per feature, concept drift and governed retrain commands.")
    app.include_router(api.router)
    app.add_exception_handler(DriftError, api.on_drift_error)
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, excluded_urls="healthz,readyz,metrics")
    return app
