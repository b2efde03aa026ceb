"""The trainer application: ``create_app(settings)`` and the lifespan that owns every client.

The lifespan creates the topics, loads the idempotency ledger, and starts the command consumer
and the schedules; the HTTP app serves manual commands, outcomes, health and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from schemas.topics import CATALOGUE
from schemas.training import RetrainCommandV1
from tributary_kit.admin import ensure_topics
from tributary_kit.lag import reporting_lag
from tributary_kit.telemetry import build_tracer_provider

from trainer import __version__, api
from trainer.consumer import CommandConsumer
from trainer.errors import TrainerError
from trainer.kafka import build_command_consumer, build_producer
from trainer.ledger import KafkaLedger, Ledger
from trainer.registry_client import RegistryClient
from trainer.schedule import run_schedule
from trainer.service import TrainerService
from trainer.settings import Settings
from trainer.signing import ArtifactSigner
from trainer.specs import load_spec
from trainer.triton import TritonClient
from trainer.window import WindowReader, recent_requests

log = logging.getLogger(__name__)


def build_service(settings: Settings, ledger: Ledger) -> TrainerService:
    """The trainer core wired to Kafka, the registry and (when configured) Triton."""
    signer = (ArtifactSigner.from_file(settings.signing_key, settings.signing_key_id)
              if settings.signing_key is not None else None)
    registry = RegistryClient(settings.registry_url, trainer_token=settings.registry_token.get_secret_value(),
                              operator_token=settings.operator_token(), timeout_s=settings.registry_timeout_s,
                              signer=signer)
    triton = TritonClient(settings.triton_url, timeout_s=settings.triton_timeout_s) if settings.triton_url else None
    reader = WindowReader(settings.kafka_bootstrap, features_topic=settings.features_topic,
                          labels_topic=settings.labels_topic, timeout_s=settings.read_timeout_s)
    return TrainerService(
        settings, reader=reader, registry=registry, ledger=ledger, triton=triton,
        spec_loader=partial(load_spec, settings.kafka_bootstrap, settings.specs_topic,
                            timeout_s=settings.startup_timeout_s),
        request_sampler=lambda model, n: recent_requests(settings.kafka_bootstrap, settings.predictions_topic,
                                                         model, n),
    )


def create_app(settings: Settings) -> FastAPI:
    """The trainer app; nothing connects until the lifespan starts."""
    provider = build_tracer_provider("trainer", __version__, otlp_endpoint=settings.otlp_endpoint)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.create_topics:
            await asyncio.to_thread(ensure_topics, settings.kafka_bootstrap, CATALOGUE.values(),
                                    timeout_s=settings.startup_timeout_s)
        producer = build_producer(settings)
        ledger = KafkaLedger(settings.kafka_bootstrap, completed_topic=settings.completed_topic,
                             failed_topic=settings.failed_topic)
        service: TrainerService | None = None
        consumer: CommandConsumer | None = None
        tasks: list[asyncio.Task[None]] = []
        stopping = asyncio.Event()
        try:
            await asyncio.to_thread(ledger.load, settings.startup_timeout_s)
            service = build_service(settings, ledger)
            service.tracer = provider.get_tracer("trainer")
            app.state.settings = settings
            app.state.producer = producer
            app.state.ledger = ledger
            app.state.service = service
            if settings.consume_commands:
                consumer = CommandConsumer(build_command_consumer(settings), service, producer, ledger,
                                           topic=settings.command_topic, retry_backoff_s=settings.retry_backoff_s,
                                           tracer=provider.get_tracer("trainer"))
                app.state.consumer = consumer
                tasks.append(asyncio.create_task(consumer.run(), name="trainer-commands"))

            async def publish(command: RetrainCommandV1) -> None:
                await api.publish_command(command, producer, settings.command_topic)

            for schedule in settings.schedules:
                tasks.append(asyncio.create_task(run_schedule(schedule, publish, stopping),
                                                 name=f"trainer-schedule-{schedule.model_name}"))
            log.info("trainer ready", extra={"bootstrap": settings.kafka_bootstrap, "outcomes": len(ledger)})
            lag_groups = {settings.group_id: [settings.command_topic]} if settings.consume_commands else {}
            async with reporting_lag(settings.kafka_bootstrap, lag_groups):
                yield
        finally:
            stopping.set()
            if consumer is not None:
                consumer.stop()
            for task in tasks:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, timeout=settings.time_budget_s + 30)
            if service is not None:
                service.registry.close()
                if service.triton is not None:
                    service.triton.close()
            ledger.close()
            await asyncio.to_thread(producer.close, settings.delivery_timeout_s)
            provider.shutdown()

    app = FastAPI(title="Tributary trainer", version=__version__, lifespan=lifespan,
                  description="Retrains models from the Kafka stream on command; manual commands and outcomes.")
    app.include_router(api.router)
    app.add_exception_handler(TrainerError, api.on_trainer_error)
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, excluded_urls="healthz,readyz,metrics")
    return app
