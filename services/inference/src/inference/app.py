"""The gateway application: ``create_app(settings)`` and the lifespan that owns every client.

The lifespan connects Redis, Triton's gRPC pool, the fallback, Kafka; starts the rollout
refresher and consumers (rollout topic, features, labels, requests), the shadow workers, the
prediction publisher, the canary analysis and the gRPC server; and stops them in reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from redis.asyncio import Redis
from schemas.inference import CanaryDecidedV1, InferenceRequestedV1
from schemas.ingest import FeatureEventV1, LabelEventV1
from schemas.registry import RolloutChangedV1
from schemas.topics import CATALOGUE
from tributary_kit.admin import ensure_topics
from tributary_kit.lag import reporting_lag
from tributary_kit.telemetry import build_tracer_provider

from inference import __version__, api, infer_asgi
from inference.admission import AdaptiveLimit
from inference.aliases import AliasWriter, LocalAliases, ReadOnlyAliases, RegistryAliases
from inference.backend import Backend
from inference.breaker import CircuitBreaker
from inference.canary import CanaryAnalyzer, CanaryStats, LabelJoin, Policy
from inference.coalesce import Coalescer
from inference.consumer import RequestHandler
from inference.contracts import RegistryContracts
from inference.errors import InferenceError
from inference.fallback import OnnxFallback
from inference.features import OnlineStore
from inference.grpc_server import build_server
from inference.kafka import EventConsumer, PredictionPublisher, build_consumer, build_producer, publish
from inference.readiness import VersionGate
from inference.rollout import RolloutState
from inference.service import InferenceService
from inference.settings import Settings
from inference.shadow import ShadowMirror
from inference.triton import TritonBackend

log = logging.getLogger(__name__)


def policy_of(settings: Settings) -> Policy:
    """The canary analysis policy from the settings."""
    return Policy(steps=tuple(settings.canary_steps), min_requests=settings.canary_min_requests,
                  min_requests_rollback=settings.canary_min_requests_rollback,
                  max_error_rate_increase=settings.canary_max_error_rate_increase,
                  max_p99_ratio=settings.canary_max_p99_ratio, p99_slack_ms=settings.canary_p99_slack_ms,
                  max_divergence=settings.canary_max_divergence, min_compared=settings.canary_min_compared,
                  max_accuracy_drop=settings.canary_max_accuracy_drop, min_labelled=settings.canary_min_labelled)


def create_app(settings: Settings) -> FastAPI:
    """The gateway's HTTP app (the gRPC server runs inside its lifespan); nothing connects until then."""
    provider = build_tracer_provider("inference", __version__, otlp_endpoint=settings.otlp_endpoint)
    tracer = provider.get_tracer("inference")
    fallback_root = settings.fallback_root()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.create_topics:
            await asyncio.to_thread(ensure_topics, settings.kafka_bootstrap, CATALOGUE.values(),
                                    timeout_s=settings.startup_timeout_s)
        redis = Redis.from_url(settings.redis_url, socket_timeout=settings.backend_timeout_s,
                               socket_connect_timeout=settings.backend_timeout_s)
        producer = build_producer(settings)
        triton = TritonBackend(settings.triton_grpc_url, connections=settings.triton_connections,
                               timeout_s=settings.backend_timeout_s, http_url=settings.triton_http_url)
        backend: Backend = (Coalescer(triton, calls=settings.coalesce_calls, dynamic=settings.coalesce == "all")
                            if settings.coalesce != "off" else triton)
        fallback = OnnxFallback(fallback_root) if fallback_root is not None else None
        contracts = (RegistryContracts(settings.registry_url, timeout_s=settings.registry_timeout_s)
                     if settings.registry_url else None)
        stop = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        consumers: list[EventConsumer[Any]] = []
        writers: list[AliasWriter] = []
        grpc_server = None

        def spawn(coro: Coroutine[Any, Any, None], name: str) -> None:
            task = asyncio.create_task(coro, name=name)
            task.add_done_callback(_report_stop)
            tasks.append(task)

        async def publish_rollouts(events: list[RolloutChangedV1]) -> None:
            await publish(producer, [(settings.rollout_topic, f"{e.model_name}/{e.alias}", e) for e in events])

        async def publish_decision(decision: CanaryDecidedV1) -> None:
            await publish(producer, [(settings.canary_decisions_topic, decision.model_name, decision)])

        # Predictions are a high-volume feedback stream: their own producer batches them longer.
        prediction_producer = build_producer(settings, linger_ms=settings.prediction_linger_ms,
                                             client_id="inference-predictions")
        predictions = PredictionPublisher(prediction_producer, settings.predictions_topic,
                                          queue_size=settings.prediction_queue_size)
        try:
            rollout = RolloutState(redis, prefix=settings.redis_prefix, publish=publish_rollouts)
            gate = VersionGate(triton, timeout_s=settings.backend_timeout_s, failures_to_trip=settings.canary_failures)
            rollout.on_table = gate.on_table
            await asyncio.wait_for(rollout.refresh(), settings.startup_timeout_s)
            stats = CanaryStats()
            labels = LabelJoin(stats, settings.label_join_capacity)
            store = OnlineStore(redis, prefix=settings.redis_prefix, ttl_s=settings.feature_ttl_s)
            service: InferenceService
            mirror = ShadowMirror(lambda m, v, i, o: service.run_mirror(m, v, i, o),
                                  lambda job, out, ms, diff: service.on_mirrored(job, out, ms, diff),
                                  queue_size=settings.shadow_queue_size, workers=settings.shadow_workers,
                                  max_rows=lambda m, v: service.mirror_rows(m, v),
                                  batch_wait_s=settings.shadow_batch_wait_s)
            service = InferenceService(
                rollout=rollout, backend=backend, fallback=fallback, mirror=mirror, predictions=predictions,
                stats=stats, labels=labels, store=store, timeout_s=settings.backend_timeout_s,
                max_inflight=settings.max_inflight, compare_canary=settings.compare_canary,
                model_features=settings.model_features, model_datasets=settings.model_datasets,
                contracts=contracts, gate=gate, retry_canary_on_champion=settings.canary_retry_on_champion,
                admission=(AdaptiveLimit(settings.max_inflight, tolerance=settings.adaptive_tolerance)
                           if settings.adaptive_inflight else None),
                tracer=tracer,
                breaker=CircuitBreaker(triton.name, failures=settings.breaker_failures,
                                       cooldown_s=settings.breaker_cooldown_s,
                                       probe_timeout_s=2 * settings.backend_timeout_s + 1))
            # The registry, when there is one, is the only writer of aliases (see aliases.py).
            writer: AliasWriter
            if settings.registry_url and settings.registry_token is not None:
                writer = RegistryAliases(settings.registry_url, token=settings.registry_token.get_secret_value(),
                                         timeout_s=settings.registry_timeout_s, retries=settings.registry_retries,
                                         backoff_s=settings.registry_retry_backoff_s)
            elif settings.registry_url:
                writer = ReadOnlyAliases(settings.registry_url)
            else:
                writer = LocalAliases(rollout, origin="analysis")
            writers.append(writer)
            analyzer = CanaryAnalyzer(rollout, stats, policy_of(settings), publish=publish_decision,
                                      interval_s=settings.canary_interval_s, writer=writer, failing=gate.failing)
            gate.synthetic = service.probe_version
            gate.on_failing = lambda model, version, why: analyzer.wake()
            predictions.start()
            mirror.start()
            spawn(rollout.run(settings.rollout_refresh_s, stop), "inference-rollout-refresh")
            spawn(gate.run(rollout, settings.version_ready_check_s, stop), "inference-version-gate")
            if settings.consume_rollouts:
                consumers.append(EventConsumer(
                    build_consumer(settings, group_id=None, client_id="inference-rollout"),
                    topic=settings.rollout_topic, payload_type=RolloutChangedV1, handle=rollout.on_events,
                    producer=producer, replay=True, name="rollout", tracer=tracer))
            if settings.consume_features:
                consumers.append(EventConsumer(
                    build_consumer(settings, group_id=settings.features_group_id, client_id="inference-features"),
                    topic=settings.features_topic, payload_type=FeatureEventV1, handle=store.on_events,
                    producer=producer, replay=False, name="features", tracer=tracer))
            if settings.join_labels:
                # Every replica joins the labels of its own predictions, so each has its own group,
                # starting at the end: older labels belong to predictions this replica never made.
                consumers.append(EventConsumer(
                    build_consumer(settings, group_id=f"inference-labels-{uuid.uuid4()}", client_id="inference-labels",
                                   start="latest"),
                    topic=settings.labels_topic, payload_type=LabelEventV1, handle=labels.on_labels,
                    producer=producer, replay=False, name="labels", tracer=tracer))
            if settings.consume_requests:
                consumers.append(EventConsumer(
                    build_consumer(settings, group_id=settings.requests_group_id, client_id="inference-requests"),
                    topic=settings.request_topic, payload_type=InferenceRequestedV1,
                    handle=RequestHandler(service, producer, response_topic=settings.response_topic, tracer=tracer,
                                          overload_wait_s=settings.request_overload_wait_s),
                    producer=producer, replay=False, name="requests", batch_size=64,
                    tracer=tracer))
            for c in consumers:
                spawn(c.run(), f"inference-consumer-{c.name}")
                if c.name == "rollout":
                    spawn(_live_after_replay(rollout, c), "inference-rollout-live")
            if settings.canary_analysis:
                spawn(analyzer.run(stop), "inference-canary-analysis")
            if settings.grpc_port is not None:
                grpc_server = build_server(service, triton, host=settings.host, port=settings.grpc_port)
                await grpc_server.start()
            app.state.settings = settings
            app.state.service = service
            app.state.analyzer = analyzer
            app.state.aliases = writer
            app.state.consumers = {c.name: c for c in consumers}
            app.state.predictions = predictions
            log.info("inference gateway ready", extra={"triton": settings.triton_grpc_url,
                                                       "grpc_port": settings.grpc_port})
            lag_groups: dict[str, list[str]] = {}
            if settings.consume_features:
                lag_groups[settings.features_group_id + settings.group_suffix] = [settings.features_topic]
            if settings.consume_requests:
                lag_groups[settings.requests_group_id + settings.group_suffix] = [settings.request_topic]
            async with reporting_lag(settings.kafka_bootstrap, lag_groups):
                yield
        finally:
            stop.set()
            if grpc_server is not None:
                await grpc_server.stop(5)
            for c in consumers:
                c.stop()
            for t in tasks:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(t, timeout=10)
            with contextlib.suppress(NameError):
                await mirror.stop()
            await predictions.stop()
            await backend.close()
            if fallback is not None:
                await fallback.close()
            if contracts is not None:
                await contracts.close()
            for w in writers:
                await w.close()
            await asyncio.to_thread(prediction_producer.close, 10)
            await asyncio.to_thread(producer.close, 10)
            await redis.aclose()
            provider.shutdown()

    app = FastAPI(title="Tributary inference gateway", version=__version__, lifespan=lifespan,
                  description="KServe v2 REST and gRPC in front of Triton, with canary, shadow and sticky routing, "
                              "online features and automatic canary analysis.")
    app.include_router(api.router)
    app.add_exception_handler(InferenceError, api.on_inference_error)
    app.add_exception_handler(RequestValidationError, _on_invalid_request)
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider,
                                       excluded_urls="healthz,readyz,metrics,v2/health/live,v2/health/ready")
    infer_asgi.install(app)  # the v2 infer routes skip FastAPI's stack (see infer_asgi.py)
    return app


async def _live_after_replay(rollout: RolloutState, consumer: EventConsumer[Any]) -> None:
    """Mark the rollout live once its topic's replay caught up (:meth:`RolloutState.mark_live`)."""
    await consumer.caught_up.wait()
    await rollout.mark_live()


def _report_stop(task: asyncio.Task[None]) -> None:
    """Log a background task (refresher, consumer, analysis) that stopped with an error: it is not restarted."""
    if not task.cancelled() and task.exception() is not None:
        log.error("background task stopped", exc_info=task.exception(), extra={"task": task.get_name()})


async def _on_invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [{"field": ".".join(str(p) for p in e["loc"][1:]), "message": e["msg"]} for e in exc.errors()]
    message = "; ".join(f"{p['field'] or 'body'}: {p['message']}" for p in problems[:10])
    return JSONResponse({"error": message, "code": "invalid_request", "problems": problems}, status_code=422)
