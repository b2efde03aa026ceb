"""Asynchronous inference over Kafka: requests from the request topic, answers to the response topic.

Each request goes through the same core as REST and gRPC (:class:`InferenceService`), so its
``entity_id`` routes it exactly like a REST call with the same key. Requests that fail get an
answer with the error and the HTTP status a REST caller would have seen; the answer is keyed
like the request. A batch counts as handled (its offsets are stored) only after the broker
acknowledged every answer *and* the prediction event of every answered request: at least once,
so a crash before that redelivers the requests, which are answered again with the same
``request_id`` and republish their prediction events under the same event ids.

A request the gateway refuses as overloaded (its limit on requests in flight, which a batch of 64
requests exceeds by itself when the limit is low, or Triton's full queue) waits and is tried again,
for up to ``overload_wait_s``: the topic is these requests' queue, and nobody holds a connection
open for them. Only then is it answered with the 429.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import numpy as np
from opentelemetry import trace
from schemas.envelope import Envelope
from schemas.inference import InferenceCompletedV1, InferenceRequestedV1, TensorValue
from tributary_kit.producer import AsyncProducer
from tributary_kit.telemetry import context_from

from inference import metrics
from inference.errors import InferenceError, Overloaded, http_status
from inference.kafka import publish
from inference.service import InferenceService, InferRequest, PredictRequest
from inference.tensors import Tensor, from_values, to_list

_T = TypeVar("_T")


class RequestHandler:
    """Answers a batch of Kafka inference requests (concurrently) and publishes the answers."""

    def __init__(self, service: InferenceService, producer: AsyncProducer, *, response_topic: str,
                 tracer: trace.Tracer, overload_wait_s: float = 30.0) -> None:
        self.service = service
        self.producer = producer
        self.response_topic = response_topic
        self.tracer = tracer
        self.overload_wait_s = overload_wait_s

    async def __call__(self, envelopes: list[Envelope[InferenceRequestedV1]]) -> None:
        """Answer every request of the batch and wait until the broker has the answers and the prediction events.

        Raises:
            ProducerError: an answer or a prediction event was not acknowledged; the caller retries
                the batch (its offsets stay unstored).

        """
        answered = await asyncio.gather(*(self.answer(e) for e in envelopes))
        answers = [a for a, _ in answered]
        outcomes = await asyncio.gather(
            publish(self.producer, [(self.response_topic, a.entity_id or a.request_id, a) for a in answers]),
            *(d for _, d in answered if d is not None), return_exceptions=True)
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            raise failed[0]

    async def answer(self, envelope: Envelope[InferenceRequestedV1]
                     ) -> tuple[InferenceCompletedV1, asyncio.Future[None] | None]:
        """The answer to one request (an error answer when it fails) and the delivery of its prediction event.

        The delivery is None when no prediction was made (an error answer).
        """
        req = envelope.payload
        started = time.perf_counter()
        with self.tracer.start_as_current_span("inference.kafka-request", context=context_from(envelope.traceparent)):
            try:
                if req.inputs:
                    inputs = [from_values(t.name, t.datatype, t.shape, t.data) for t in req.inputs]
                    request = InferRequest(model=req.model_name, inputs=inputs, entity=req.entity_id,
                                           request_id=req.request_id, dataset=req.dataset, protocol="kafka",
                                           durable_event=True)
                    result = await self._patiently(lambda: self.service.infer(request))
                else:
                    if req.entity_id is None:
                        raise InferenceError("a request without inputs needs an entity_id to read its features")
                    predict = PredictRequest(model=req.model_name, entity=req.entity_id, features=dict(req.features),
                                             dataset=req.dataset, request_id=req.request_id, durable_event=True)
                    result = (await self._patiently(lambda: self.service.predict(predict))).result
            except InferenceError as exc:
                metrics.ASYNC_REQUESTS.labels("error").inc()
                return InferenceCompletedV1(request_id=req.request_id, model_name=req.model_name,
                                            entity_id=req.entity_id, error=str(exc), status=http_status(exc),
                                            latency_ms=(time.perf_counter() - started) * 1000,
                                            completed_at=datetime.now(UTC)), None
        metrics.ASYNC_REQUESTS.labels("ok").inc()
        return InferenceCompletedV1(request_id=req.request_id, model_name=req.model_name,
                                    model_version=result.version, route=result.route, entity_id=req.entity_id,
                                    outputs=[_value(t) for t in result.outputs], latency_ms=result.latency_ms,
                                    completed_at=datetime.now(UTC)), result.event_delivery

    async def _patiently(self, call: Callable[[], Awaitable[_T]]) -> _T:
        """``call()``; while the gateway refuses it as overloaded, wait (5 ms, doubling to 200 ms) and call again.

        Raises:
            Overloaded: still refused after ``overload_wait_s``.

        """
        deadline = time.monotonic() + self.overload_wait_s
        pause = 0.005
        while True:
            try:
                return await call()
            except Overloaded:
                if time.monotonic() + pause > deadline:
                    raise
                metrics.ASYNC_OVERLOAD_WAITS.inc()
                await asyncio.sleep(pause)
                pause = min(2 * pause, 0.2)


def _value(t: Tensor) -> TensorValue:
    data = to_list(t) if t.datatype != "FP16" else t.array.astype(np.float32).reshape(-1).tolist()
    return TensorValue.model_validate({"name": t.name, "datatype": t.datatype, "shape": t.shape, "data": data})
