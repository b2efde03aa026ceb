"""The transport-agnostic core: one prediction from routing to feedback.

REST, gRPC and the Kafka request consumer all call :meth:`InferenceService.infer` (raw v2
tensors) or :meth:`InferenceService.predict` (named features merged with the online store).
The core picks the version (sticky canary routing on the caller's key), checks the inputs
against the version's signature, runs it on Triton within the deadline behind a circuit breaker
(:mod:`inference.breaker`; the onnxruntime fallback answers when Triton gets skipped, gives no
answer, or lacks the routed version, and the fallback is on), and then, without making the caller
wait: mirrors to the shadow version, compares canary answers with the champion's, records the
canary evidence, and queues a ``PredictionEventV1``. A request read from Kafka asks for a durable
event instead (``durable_event``): it is never dropped, and the result carries a future done when
the broker acknowledged it, so the consumer stores the request's offset only after that.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
from opentelemetry import trace
from schemas.inference import PredictionEventV1
from tributary_kit.telemetry import context_from

from inference import metrics
from inference.admission import AdaptiveLimit
from inference.backend import Backend
from inference.breaker import CircuitBreaker
from inference.canary import CanaryStats, LabelJoin
from inference.contracts import ContractSource, InputContract
from inference.errors import (
    BackendFailed,
    BackendTimeout,
    BackendUnavailable,
    BreakerOpen,
    InferenceError,
    InvalidInput,
    ModelNotFound,
    Overloaded,
    VersionUnavailable,
    http_status,
)
from inference.features import OnlineStore
from inference.ids import RequestIds
from inference.readiness import VersionGate
from inference.rollout import RolloutState
from inference.routing import ModelRoute, Route, choose
from inference.shadow import MirrorJob, ShadowMirror
from inference.tensors import NUMPY, Signature, Tensor, check_against

log = logging.getLogger(__name__)

Scalar = float | int | str | None
T = TypeVar("T")




class PredictionSink(Protocol):
    """Where prediction events go (:class:`inference.kafka.PredictionPublisher`)."""

    def offer(self, event: PredictionEventV1) -> bool:
        """Queue one event without waiting; False when it was dropped (the queue is full)."""
        ...

    def deliver(self, event: PredictionEventV1) -> asyncio.Future[None]:
        """Queue one event that must not be dropped; the future is done once the broker acknowledged it."""
        ...


@dataclass(frozen=True, slots=True)
class InferRequest:
    """One request in the core's terms, whatever the transport."""

    model: str
    inputs: list[Tensor]
    outputs: list[str] | None = None
    entity: str | None = None
    """The stickiness key (a business key such as a customer id); the request id when None."""
    version: int | None = None
    """A version the caller pins; it must be one of the rollout's versions."""
    request_id: str = ""
    dataset: str | None = None
    features: dict[str, Scalar] = field(default_factory=dict)
    protocol: str = "rest"
    traceparent: str | None = None
    """The caller's W3C trace context, continued by the ``inference.infer`` span."""
    durable_event: bool = False
    """The prediction event must reach the broker before the request counts as handled (requests read
    from Kafka: their offset is stored only then). The event is never dropped and the result's
    ``event_delivery`` is done once the broker acknowledged it; otherwise it is offered in the
    background and may be dropped when the queue is full."""


@dataclass(frozen=True, slots=True)
class InferResult:
    """The answer: which version and route produced which outputs, and how."""

    model: str
    version: int
    route: Route
    outputs: list[Tensor]
    request_id: str
    backend: str
    latency_ms: float
    event_delivery: asyncio.Future[None] | None = None
    """For a ``durable_event`` request: done when the broker acknowledged its prediction event (fails
    when it refused it); None otherwise."""


@dataclass(frozen=True, slots=True)
class PredictRequest:
    """``POST /v1/predict``: named features for an entity."""

    model: str
    entity: str
    features: dict[str, Scalar]
    dataset: str | None = None
    version: int | None = None
    request_id: str = ""
    durable_event: bool = False
    """As :attr:`InferRequest.durable_event`."""


@dataclass(frozen=True, slots=True)
class PredictResult:
    """The answer of :meth:`InferenceService.predict`, with where each feature came from."""

    result: InferResult
    prediction: Scalar
    from_request: list[str]
    from_store: list[str]
    store_available: bool


class InferenceService:
    """Runs predictions; knows nothing about HTTP, gRPC or Kafka.

    Args:
        rollout: the routing table.
        backend: Triton.
        fallback: the in-process backend used when Triton is unreachable, misses the deadline (a
            frozen or stuck Triton), is skipped by the open breaker, or lacks the routed version;
            or None (503/504 instead).
        mirror: the shadow and comparison queue.
        predictions: where prediction events go.
        stats: canary evidence.
        labels: the label join (remembers predictions by entity).
        store: the online feature store.
        timeout_s: deadline of each backend call.
        max_inflight: requests served at once before shedding with 429.
        admission: an adaptive limit on requests served at once, at most ``max_inflight``
            (:mod:`inference.admission`); None keeps ``max_inflight`` fixed.
        compare_canary: mirror canary-served requests to the champion for divergence.
        model_features: feature names in input order per model (see the settings).
        model_datasets: dataset of each model's online features.
        contracts: input contracts of trainer-built models (``numeric``/``categorical`` inputs), or None.
        breaker: the circuit breaker in front of ``backend``; default: 5 failures, 2 s cooldown.
        gate: which canary and shadow versions Triton reports ready (:mod:`inference.readiness`): the
            canary's share of a version not ready goes to the champion and its shadow mirrors are skipped;
            None routes without looking. A canary call Triton answers with a failure, or that gets no
            answer while the champion's does, counts against the canary in the gate (after some in a
            row it is *failing*: treated as not ready).
        retry_canary_on_champion: a canary call that failed is answered by the champion
            (``inference_canary_retried_total``) instead of the caller getting the canary's 502/503/504.
        tracer: OpenTelemetry tracer.
        clock: monotonic seconds (tests).

    """

    def __init__(self, *, rollout: RolloutState, backend: Backend, fallback: Backend | None, mirror: ShadowMirror,
                 predictions: PredictionSink, stats: CanaryStats, labels: LabelJoin, store: OnlineStore,
                 timeout_s: float, max_inflight: int, compare_canary: bool = True,
                 model_features: dict[str, list[str]] | None = None, model_datasets: dict[str, str] | None = None,
                 contracts: ContractSource | None = None, breaker: CircuitBreaker | None = None,
                 gate: VersionGate | None = None, retry_canary_on_champion: bool = True,
                 admission: AdaptiveLimit | None = None, tracer: trace.Tracer | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rollout = rollout
        self.backend = backend
        self.fallback = fallback
        self.mirror = mirror
        self.predictions = predictions
        self.stats = stats
        self.labels = labels
        self.store = store
        self.timeout_s = timeout_s
        self.max_inflight = max_inflight
        self.admission = admission
        if admission is None:
            metrics.INFLIGHT_LIMIT.set(max_inflight)
        self.compare_canary = compare_canary
        self.model_features = model_features or {}
        self.model_datasets = model_datasets or {}
        self.contracts = contracts
        self.breaker = breaker or CircuitBreaker(backend.name, probe_timeout_s=2 * timeout_s + 1, clock=clock)
        self.gate = gate
        self.retry_canary_on_champion = retry_canary_on_champion
        self._skip_counters: dict[tuple[str, str, str], Any] = {}
        self._tracer = tracer or trace.get_tracer("inference")
        self._clock = clock
        self._signatures: dict[tuple[str, int], Signature] = {}
        self._inflight = 0
        self._missing: dict[tuple[str, int], float] = {}
        """Versions Triton said it lacks, served from the fallback until the given clock time."""
        self._fallback_counters: dict[tuple[str, str], Any] = {}
        self._ids = RequestIds()
        # Labelled metric children by label values: looking them up per request costs a lock each.
        self._inflight_gauge = metrics.INFLIGHT
        self._shed_inflight = metrics.SHED.labels("inflight")
        self._request_counters: dict[tuple[str, ...], Any] = {}
        self._latency_histograms: dict[tuple[str, ...], Any] = {}
        self._backend_histograms: dict[tuple[str, ...], Any] = {}

    # -- requests -----------------------------------------------------------------------------

    def shed(self) -> str | None:
        """Why a request arriving now is refused (429) when the gateway is at its limit of requests in flight.

        None when it is not. Counted in ``inference_shed_total{reason="inflight"}``. The protocol
        fronts ask before they decode a body: under overload most requests are refused, and each
        refusal's cost comes out of the CPU that serves the admitted ones.
        """
        limit = self.max_inflight if self.admission is None else self.admission.current
        if self._inflight < limit:
            return None
        self._shed_inflight.inc()
        if self.admission is None:
            return f"{self._inflight} requests in flight (limit {limit}); retry shortly"
        return (f"{self._inflight} requests in flight (adaptive limit {limit} of at most {self.admission.maximum}: "
                f"answers are slower than usual); retry shortly")

    async def infer(self, request: InferRequest) -> InferResult:
        """Route, check, run and record one request.

        Raises:
            InvalidInput, ModelNotFound: the caller must change the request (4xx).
            Overloaded: shed (429); retry after a pause.
            BackendUnavailable, BackendTimeout, BackendFailed: the backend failed (5xx).

        """
        refusal = self.shed()
        if refusal is not None:
            raise Overloaded(refusal)
        self._inflight += 1
        self._inflight_gauge.set(self._inflight)
        started = time.perf_counter()
        request_id = request.request_id or self._ids.next()
        version: int | None = None
        route_name: Route | None = None
        status = "500"
        try:
            parent = context_from(request.traceparent) if request.traceparent else None
            with self._tracer.start_as_current_span("inference.infer", context=parent) as span:
                route = self.rollout.route(request.model)
                version, route_name = self._choose(route, request, request_id)
                span.set_attributes({"inference.model": request.model, "inference.version": version,
                                     "inference.route": route_name})
                try:
                    outputs, backend = await self._serve(request.model, version, request.inputs, request.outputs,
                                                         request_id)
                except (BackendFailed, BackendUnavailable, BackendTimeout) as exc:
                    if (route_name != "canary" or self.gate is None or route.champion is None
                            or isinstance(exc, BreakerOpen)):
                        raise
                    # The canary failed this request: the champion answers the caller (a canary on
                    # trial must not cost callers errors), and the failure is the canary's evidence.
                    outputs, backend = await self._instead_of_canary(request, version, route.champion, exc,
                                                                     started, request_id)
                    version, route_name = route.champion, "champion"
                    span.set_attributes({"inference.version": version, "inference.route": route_name,
                                         "inference.canary_failed": True})
                else:
                    if route_name == "canary" and self.gate is not None:
                        self.gate.answered(request.model, version)
                latency_ms = (time.perf_counter() - started) * 1000
                if self.admission is not None:
                    self.admission.record(latency_ms / 1000)
                result = InferResult(request.model, version, route_name, outputs, request_id, backend, latency_ms)
                self.stats.record(request.model, version, latency_ms=latency_ms, ok=True)
                event = None
                if request.durable_event:
                    # Made now, so the caller can wait for the broker before it counts the request
                    # as handled (a Kafka request's offset); same id when the request comes again.
                    event = self._event(request, route, result)
                    result = replace(result, event_delivery=self.predictions.deliver(event))
                # Mirrors, comparison, the prediction event and the label join run once the caller
                # has its answer (the next turn of the event loop), in this request's trace.
                asyncio.get_running_loop().call_soon(self._after, request, route, result, event)
            status = "200"
            return result
        except InferenceError as exc:
            status = str(http_status(exc))
            # A request the open breaker turned away says nothing about its version (no call was made).
            if (version is not None and not isinstance(exc, BreakerOpen)
                    and isinstance(exc, BackendFailed | BackendTimeout | BackendUnavailable | VersionUnavailable)):
                seconds = time.perf_counter() - started
                self.stats.record(request.model, version, latency_ms=seconds * 1000, ok=False)
                if self.admission is not None:  # a backend that stops answering slows the window down
                    self.admission.record(seconds)
            raise
        finally:
            self._inflight -= 1
            self._inflight_gauge.set(self._inflight)
            v, r = (str(version), route_name) if version is not None and route_name else ("none", "none")
            key = (request.protocol, request.model, v, r, status)
            counter = self._request_counters.get(key)
            if counter is None:
                counter = self._request_counters[key] = metrics.REQUESTS.labels(*key)
            counter.inc()
            if status == "200":
                lkey = (request.model, v, r)
                histogram = self._latency_histograms.get(lkey)
                if histogram is None:
                    histogram = self._latency_histograms[lkey] = metrics.LATENCY.labels(*lkey)
                histogram.observe(time.perf_counter() - started)

    def _choose(self, route: ModelRoute, request: InferRequest, request_id: str) -> tuple[int, Route]:
        if request.version is not None:
            if request.version not in route.versions:
                raise ModelNotFound(f"version {request.version} of {request.model!r} is not in its rollout "
                                    f"(champion {route.champion}, canary {route.canary}, shadow {route.shadow}); "
                                    "pin one of those or leave the version out")
            return request.version, "pinned"
        choice = choose(route, request.entity or request_id)
        if choice is None:
            raise ModelNotFound(f"model {request.model!r} has no champion version yet; point its champion alias "
                                "at a version")
        if (choice[1] == "canary" and self.gate is not None and route.champion is not None
                and choice[0] != route.champion and not self.gate.ready(request.model, choice[0])):
            # Triton does not report the canary ready (not loaded yet, or its load refused), or its
            # calls keep failing: its share goes to the champion rather than to the fallback or a 503.
            self._skipped(request.model, "canary", choice[0])
            return route.champion, "champion"
        return choice

    def _skipped(self, model: str, alias: str, version: int) -> None:
        reason = "failing" if self.gate is not None and self.gate.failing(model, version) else "not_ready"
        counter = self._skip_counters.get((model, alias, reason))
        if counter is None:
            counter = self._skip_counters[(model, alias, reason)] = metrics.CANARY_SKIPPED.labels(model, alias,
                                                                                                   reason)
        counter.inc()

    async def _instead_of_canary(self, request: InferRequest, canary: int, champion: int, exc: InferenceError,
                                 started: float, request_id: str) -> tuple[list[Tensor], str]:
        """The champion's answer to a request its canary failed; the failure counted against the canary.

        A canary call Triton answered with a failure is the canary's failure whatever the champion
        does. A canary call that got no answer (its server unreachable or killed, past the
        deadline) counts against the canary only once the champion answered: when Triton itself
        is down it is not the canary's fault (that is the breaker's business).

        Raises:
            InferenceError: ``exc`` when the gateway does not retry on the champion
                (``retry_canary_on_champion``), or what serving the champion raised.
        """
        assert self.gate is not None
        answered = isinstance(exc, BackendFailed)
        if answered:
            self.gate.failed(request.model, canary, str(exc))
        if not self.retry_canary_on_champion:
            raise exc  # recorded as the canary's failure where the caller's error is
        answer = await self._serve(request.model, champion, request.inputs, request.outputs, request_id)
        if not answered:
            self.gate.failed(request.model, canary, str(exc))
        self.stats.record(request.model, canary, latency_ms=(time.perf_counter() - started) * 1000, ok=False)
        metrics.CANARY_RETRIED.labels(request.model).inc()
        return answer

    async def probe_version(self, model: str, version: int) -> None:
        """One synthetic request to ``version`` on Triton: zeros of its input signature, one row.

        Raises:
            InferenceError: the version did not answer it.
        """
        signature = await self.signature(model, version)
        inputs = []
        for spec in signature.inputs:
            shape = [1 if d < 0 else d for d in spec.shape]
            array = (np.full(shape, b"", dtype=object) if spec.datatype == "BYTES"
                     else np.zeros(shape, dtype=NUMPY[spec.datatype]))
            inputs.append(Tensor(spec.name, spec.datatype, array))
        await self.backend.infer(model, version, inputs, None, timeout_s=self.timeout_s)

    async def signature(self, model: str, version: int) -> Signature:
        """The version's signature (cached: a version's contents never change).

        Raises:
            VersionUnavailable: Triton lacks the version and no fallback has it.
            BreakerOpen, BackendUnavailable, BackendTimeout: Triton gave no answer and there is no fallback.

        """
        key = (model, version)
        found = self._signatures.get(key)
        if found is not None:
            return found
        if self._missing and self._lacks(model, version):
            return await self._fallback_signature(model, version)
        try:
            found = await self._on_triton(lambda: self.backend.signature(model, version))
        except (BackendUnavailable, BackendTimeout):
            if self.fallback is None:
                raise
            return await self._fallback_signature(model, version)
        except ModelNotFound as exc:
            self._not_loaded(model, version, exc)
            return await self._fallback_signature(model, version)
        # Only Triton's is kept: the fallback's lacks the batching configuration, and Triton is asked
        # again once it answers.
        self._signatures[key] = found
        return found

    async def _fallback_signature(self, model: str, version: int) -> Signature:
        assert self.fallback is not None
        try:
            return await self.fallback.signature(model, version)
        except ModelNotFound as exc:
            raise VersionUnavailable(f"{model} v{version} is routed but neither Triton nor the fallback has it "
                                     f"({exc}); retry once the registry's repository holds it") from None

    async def _serve(self, model: str, version: int, inputs: list[Tensor], outputs: list[str] | None,
                     request_id: str) -> tuple[list[Tensor], str]:
        signature = await self.signature(model, version)
        check_against(inputs, signature.inputs, model=model, max_batch_size=signature.max_batch_size)
        if outputs:
            known = {o.name for o in signature.outputs}
            unknown = [o for o in outputs if o not in known]
            if unknown:
                raise InvalidInput(f"model {model!r} has no output(s) {unknown}; its outputs are {sorted(known)}")
        breaker = self.breaker
        if breaker.closed and not self._missing:
            # The hot path: the breaker is read once; everything else is for failures.
            try:
                answer = await self._timed(self.backend, model, version, inputs, outputs, request_id)
            except (BackendUnavailable, BackendTimeout) as exc:
                breaker.failed(str(exc))
                return await self._fall_back(model, version, inputs, outputs, request_id, exc)
            except ModelNotFound as exc:
                breaker.succeeded()  # Triton answered
                self._not_loaded(model, version, exc)
                return await self._from_fallback(model, version, inputs, outputs, request_id, "not_loaded")
            except InferenceError:
                breaker.succeeded()  # Triton answered: a refusal or a model's failure is no sign of a dead server
                raise
            if breaker.failures:
                breaker.succeeded()
            return answer, self.backend.name
        if self._missing and self._lacks(model, version):
            return await self._from_fallback(model, version, inputs, outputs, request_id, "not_loaded")
        try:
            answer = await self._on_triton(lambda: self._timed(self.backend, model, version, inputs, outputs,
                                                               request_id))
        except (BackendUnavailable, BackendTimeout) as exc:
            return await self._fall_back(model, version, inputs, outputs, request_id, exc)
        except ModelNotFound as exc:
            self._not_loaded(model, version, exc)
            return await self._from_fallback(model, version, inputs, outputs, request_id, "not_loaded")
        return answer, self.backend.name

    async def _on_triton(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call`` on Triton under the breaker: while it is not closed, only as its one probe.

        Raises:
            BreakerOpen: the breaker is open (or another probe is out): Triton was not called.
            and whatever ``call`` raises.

        """
        breaker = self.breaker
        probe = not breaker.closed
        if probe and not breaker.admit_probe():
            raise BreakerOpen(f"{breaker.describe()}; retry shortly")
        try:
            result = await call()
        except (BackendUnavailable, BackendTimeout) as exc:
            if probe:
                breaker.probe_failed("request", str(exc))
            else:
                breaker.failed(str(exc))
            raise
        except InferenceError:
            if probe:  # Triton answered: alive, whatever it said about this request
                breaker.probe_succeeded("request")
            else:
                breaker.succeeded()
            raise
        except BaseException:
            if probe:
                breaker.probe_abandoned()
            raise
        if probe:
            breaker.probe_succeeded("request")
        else:
            breaker.succeeded()
        return result

    async def _fall_back(self, model: str, version: int, inputs: list[Tensor], outputs: list[str] | None,
                         request_id: str, exc: BackendUnavailable | BackendTimeout) -> tuple[list[Tensor], str]:
        """Triton gave no answer (or was skipped): the fallback answers, or ``exc`` goes to the caller."""
        if self.fallback is None:
            raise exc
        reason = ("breaker_open" if isinstance(exc, BreakerOpen)
                  else "timeout" if isinstance(exc, BackendTimeout) else "unreachable")
        return await self._from_fallback(model, version, inputs, outputs, request_id, reason)

    def _not_loaded(self, model: str, version: int, exc: ModelNotFound) -> None:
        """Triton answered that it lacks a version the routing table names: the server's state, not the caller's.

        With a fallback, the version is served from it for the breaker's cooldown before Triton is
        asked again (a version being loaded); without one the caller gets 503.
        """
        if self.fallback is None:
            raise VersionUnavailable(
                f"{model} v{version} is routed here but Triton has not loaded it or it is not ready ({exc}); no "
                "fallback is configured (INFERENCE_FALLBACK=none): retry shortly, or load the version in Triton")
        if (model, version) not in self._missing:
            log.warning("Triton lacks a routed version; serving it from the fallback",
                        extra={"model": model, "version": version, "error": str(exc)})
        self._missing[(model, version)] = self._clock() + self.breaker.cooldown_s

    def _lacks(self, model: str, version: int) -> bool:
        """Whether Triton said moments ago that it lacks this version (only recorded with a fallback)."""
        until = self._missing.get((model, version))
        if until is None:
            return False
        if self._clock() < until:
            return True
        del self._missing[(model, version)]
        return False

    async def _from_fallback(self, model: str, version: int, inputs: list[Tensor], outputs: list[str] | None,
                             request_id: str, reason: str) -> tuple[list[Tensor], str]:
        assert self.fallback is not None
        try:
            answer = await self._timed(self.fallback, model, version, inputs, outputs, request_id)
        except ModelNotFound as exc:
            raise VersionUnavailable(f"{model} v{version} is routed but neither Triton nor the fallback has it "
                                     f"({exc}); retry once the registry's repository holds it") from None
        key = (model, reason)
        counter = self._fallback_counters.get(key)
        if counter is None:
            counter = self._fallback_counters[key] = metrics.FALLBACKS.labels(*key)
        counter.inc()
        return answer, self.fallback.name

    async def _timed(self, backend: Backend, model: str, version: int, inputs: list[Tensor],
                     outputs: list[str] | None, request_id: str) -> list[Tensor]:
        started = time.perf_counter()
        try:
            return await backend.infer(model, version, inputs, outputs, timeout_s=self.timeout_s,
                                       request_id=request_id)
        except Overloaded:
            metrics.SHED.labels("backend_queue").inc()
            raise
        finally:
            key = (backend.name, model, str(version))
            histogram = self._backend_histograms.get(key)
            if histogram is None:
                histogram = self._backend_histograms[key] = metrics.BACKEND_SECONDS.labels(*key)
            histogram.observe(time.perf_counter() - started)

    async def mirror_rows(self, model: str, version: int) -> int:
        """Most rows one mirror call may carry: the version's maximum batch size (0: no batching)."""
        return (await self.signature(model, version)).max_batch_size

    async def run_mirror(self, model: str, version: int, inputs: list[Tensor], outputs: list[str] | None
                         ) -> list[Tensor]:
        """A mirror call: Triton only, with the same deadline (the fallback is for callers).

        Skipped (:class:`BreakerOpen`) while the breaker is not closed: no mirror waits on a Triton
        that gives no answer, and mirrors never probe.
        """
        if not self.breaker.closed:
            raise BreakerOpen(f"{self.breaker.describe()}; mirror skipped")
        return await self.backend.infer(model, version, inputs, outputs, timeout_s=self.timeout_s)

    def on_mirrored(self, job: MirrorJob, outputs: list[Tensor], latency_ms: float, diff: float | None) -> None:
        """A mirror finished: record divergence (compare) or publish the shadow prediction."""
        if job.kind == "compare":
            if diff is not None:
                self.stats.record_divergence(job.model, job.served_version, diff)
            return
        self.predictions.offer(_event(model=job.model, version=job.version, route="shadow", outputs=outputs,
                                      request_id=job.request_id, entity=job.entity, dataset=job.dataset,
                                      features=job.features or {}, latency_ms=latency_ms))

    def _after(self, request: InferRequest, route: ModelRoute, result: InferResult,
               delivered: PredictionEventV1 | None) -> None:
        # Everything here is fire-and-forget: the caller's answer never waits for it (a durable
        # request's event was handed to the publisher already: `delivered`).
        if route.shadow is not None and route.shadow != result.version:
            if self.gate is not None and route.shadow != route.champion and not self.gate.ready(request.model,
                                                                                                 route.shadow):
                self._skipped(request.model, "shadow", route.shadow)
            else:
                self.mirror.offer(MirrorJob("shadow", request.model, route.shadow, request.inputs,
                                            request.outputs, result.outputs, result.version, result.request_id,
                                            request.entity, request.dataset, request.features))
        if _alias_of(route, result) == "canary" and self.compare_canary and route.champion is not None:
            self.mirror.offer(MirrorJob("compare", request.model, route.champion, request.inputs, request.outputs,
                                        result.outputs, result.version, result.request_id))
        event = delivered
        if event is None:
            event = self._event(request, route, result)
            self.predictions.offer(event)
        if request.entity is not None:
            self.labels.remember(request.entity, request.model, result.version, event.prediction)

    @staticmethod
    def _event(request: InferRequest, route: ModelRoute, result: InferResult) -> PredictionEventV1:
        return _event(model=request.model, version=result.version, route=_alias_of(route, result),
                      outputs=result.outputs, request_id=result.request_id, entity=request.entity,
                      dataset=request.dataset, features=request.features, latency_ms=result.latency_ms)

    # -- /v1/predict ----------------------------------------------------------------------------

    async def predict(self, request: PredictRequest) -> PredictResult:
        """Named features for an entity, completed from the online store, then :meth:`infer`.

        Features in the request win over stored ones; the store is read (one round trip) only
        when the request lacks some.

        Raises:
            InvalidInput: a feature is missing from both, or is not a number.
            and everything :meth:`infer` raises.

        """
        route = self.rollout.route(request.model)
        version = request.version if request.version is not None else (route.champion or route.canary)
        if version is None:
            raise ModelNotFound(f"model {request.model!r} has no champion version yet")
        if version not in route.versions:
            raise ModelNotFound(f"version {version} of {request.model!r} is not in its rollout (champion "
                                f"{route.champion}, canary {route.canary}, shadow {route.shadow}); pin one of those "
                                "or leave the version out")
        signature = await self.signature(request.model, version)
        contract = await self._contract(request.model, version, signature)
        names, per_feature = (contract.names, False) if contract else self._feature_layout(request.model, signature)
        dataset = request.dataset or self.model_datasets.get(request.model, request.model)
        merged: dict[str, Scalar] = {n: request.features[n] for n in names if n in request.features}
        from_request = sorted(merged)
        from_store: list[str] = []
        store_ok = True
        missing = [n for n in names if n not in merged]
        if missing:
            stored = await self.store.read(dataset, request.entity)
            store_ok = stored is not None
            for n in missing:
                if stored and n in stored:
                    merged[n] = stored[n]
                    from_store.append(n)
        still = [n for n in names if n not in merged or merged[n] is None]
        if still and contract is None:  # a contract model imputes missing values itself
            where = "" if store_ok else " (the online store is unreachable)"
            raise InvalidInput(f"feature(s) {still} of model {request.model!r} are neither in the request nor in "
                               f"the online store for {dataset}/{request.entity}{where}")
        if contract is not None:
            inputs = contract.tensors(merged, model=request.model)
        else:
            inputs = self._feature_tensors(request.model, signature, names, per_feature, merged)
        result = await self.infer(InferRequest(model=request.model, inputs=inputs, entity=request.entity,
                                               version=request.version, request_id=request.request_id,
                                               dataset=dataset, features=merged, protocol="predict",
                                               durable_event=request.durable_event))
        return PredictResult(result, decide_prediction(result.outputs), from_request, sorted(from_store), store_ok)

    async def _contract(self, model: str, version: int, signature: Signature) -> InputContract | None:
        # The trainer's models take `numeric` FP32 and `categorical` INT64 tensors built from the
        # input contract the registry keeps with the version; an explicit feature list wins.
        if self.contracts is None or model in self.model_features:
            return None
        if not {s.name for s in signature.inputs} <= {"numeric", "categorical"}:
            return None
        return await self.contracts.get(model, version)

    def _feature_layout(self, model: str, signature: Signature) -> tuple[list[str], bool]:
        if model in self.model_features:
            if len(signature.inputs) != 1:
                raise InvalidInput(f"model {model!r} has {len(signature.inputs)} inputs; a feature list needs one")
            return self.model_features[model], False
        if signature.inputs and all(len(s.shape) == 2 and s.shape[1] == 1 for s in signature.inputs):
            return [s.name for s in signature.inputs], True
        raise InvalidInput(f"model {model!r} takes a tensor, not named features: call /v2/models/{model}/infer, "
                           "set its feature order in INFERENCE_MODEL_FEATURES, or (a trainer-built model) set "
                           "INFERENCE_REGISTRY_URL so the gateway reads its input contract")

    @staticmethod
    def _feature_tensors(model: str, signature: Signature, names: list[str], per_feature: bool,
                         values: dict[str, Scalar]) -> list[Tensor]:
        def number(name: str, datatype: str) -> Any:
            value = values[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidInput(f"feature {name!r} of model {model!r} must be a number, got {value!r}")
            return np.asarray([[value]], dtype=NUMPY[datatype])

        if per_feature:
            return [Tensor(s.name, s.datatype, number(s.name, s.datatype)) for s in signature.inputs]
        spec = signature.inputs[0]
        row = np.concatenate([number(n, spec.datatype) for n in names], axis=1)
        return [Tensor(spec.name, spec.datatype, row)]

    # -- health -----------------------------------------------------------------------------------

    async def ready(self) -> tuple[bool, str]:
        """Whether this replica can serve, and why not (the breaker's state when it is not closed).

        While the breaker is open, Triton is not asked (the answer is immediate); once its cooldown
        is over this check is the half-open probe when no request took it, so a replica that no
        traffic reaches (taken out of service for being unready) still finds Triton again.
        """
        if not self.rollout.loaded:
            return False, "rollout state not loaded from Redis yet"
        breaker = self.breaker
        if breaker.closed:
            up = await self.backend.ready()
            down = "Triton is unreachable"
        elif breaker.admit_probe():
            try:
                up = await self.backend.ready()
            except BaseException:
                breaker.probe_abandoned()
                raise
            if up:
                breaker.probe_succeeded("health")
            else:
                breaker.probe_failed("health", "Triton's readiness check got no answer, or not ready")
            down = breaker.describe()
        else:
            up, down = False, breaker.describe()
        if up:
            ok, reason = True, "ready"
        elif self.fallback is not None:
            ok, reason = True, f"{down}; serving from the onnxruntime fallback"
        else:
            return False, f"{down} and no fallback is configured"
        if self.gate is not None:
            skipped = self.gate.not_ready(self.rollout.table)
            failing = [(m, v, a) for m, v, a in skipped if self.gate.failing(m, v)]
            unready = [k for k in skipped if k not in failing]
            notes = []
            if unready:
                what = ", ".join(f"{m} v{v} ({a})" for m, v, a in unready)
                notes.append(f"Triton does not report {what} ready: canary traffic goes to the champion, shadow "
                             "mirrors are skipped")
            if failing:
                what = ", ".join(f"{m} v{v} ({a}: {self.gate.failing(m, v)})" for m, v, a in failing)
                notes.append(f"failing although ready: {what}; its traffic goes to the champion")
            for note in notes:
                reason = note if reason == "ready" else f"{reason}; {note}"
        if self.rollout.redis_error is not None:
            age = time.monotonic() - (self.rollout.refreshed_at or time.monotonic())
            redis = (f"Redis unreachable ({self.rollout.redis_error}); serving the last known routes, "
                     f"read {age:.0f}s ago")
            reason = redis if reason == "ready" else f"{reason}; {redis}"
        return ok, reason

    async def model_ready(self, model: str, version: int | None = None) -> bool:
        """Whether the model's champion (or ``version``) can answer now (Triton unasked while the breaker is open)."""
        route = self.rollout.route(model)
        chosen = version if version is not None else route.champion
        if chosen is None or chosen not in route.versions:
            return False
        if (self.breaker.closed and not (self._missing and self._lacks(model, chosen))
                and await self.backend.model_ready(model, chosen)):
            return True
        return self.fallback is not None and await self.fallback.model_ready(model, chosen)


def _alias_of(route: ModelRoute, result: InferResult) -> Literal["champion", "canary", "shadow"]:
    if result.route != "pinned":
        return result.route
    if result.version == route.champion:
        return "champion"
    return "canary" if result.version == route.canary else "shadow"


def decide_prediction(outputs: list[Tensor]) -> Scalar:
    """The decided value of a one-row answer: a single value as is, several: the arg-max index.

    >>> decide_prediction([Tensor("y", "FP32", np.array([[0.75]], dtype=np.float32))])
    0.75
    >>> decide_prediction([Tensor("p", "FP32", np.array([[0.1, 0.7, 0.2]], dtype=np.float32))])
    1
    """
    if not outputs or outputs[0].array.size == 0 or outputs[0].datatype == "BYTES":
        return None
    array = outputs[0].array
    rows = array.shape[0] if array.ndim > 1 else 1
    if rows != 1:
        return None
    flat = array.reshape(-1)
    if flat.size == 1:
        value = flat[0].item()
        return value if isinstance(value, int | float) else None
    return int(np.argmax(flat))


def _event(*, model: str, version: int, route: Literal["champion", "canary", "shadow"], outputs: list[Tensor],
           request_id: str, entity: str | None, dataset: str | None, features: dict[str, Scalar],
           latency_ms: float) -> PredictionEventV1:
    flat = {t.name: t.array.reshape(-1).astype(np.float64).tolist() for t in outputs if t.datatype != "BYTES"}
    safe_id = request_id if _valid_id(request_id) else str(uuid.uuid5(uuid.NAMESPACE_URL, request_id))
    return PredictionEventV1.model_construct(
        request_id=safe_id, model_name=model, model_version=version, route=route, dataset=dataset,
        entity_id=entity, features=features, outputs=flat, prediction=decide_prediction(outputs),
        latency_ms=latency_ms, served_at=datetime.now(UTC))


_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def _valid_id(text: str) -> bool:
    return _ID.fullmatch(text) is not None
