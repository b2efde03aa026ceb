"""The batch routes as plain ASGI, in front of the FastAPI application.

``POST /v1/events/batch`` and ``POST /v1/labels/batch`` carry nearly all of ingest's traffic.
FastAPI's routing, dependency resolution, exception middleware, response model serialisation and
the generic OpenTelemetry ASGI middleware cost about a tenth of the CPU of a 1000-event batch,
as much as validating its events against their spec. :class:`BatchRoutes` answers these two
routes directly with the same code as the FastAPI routes (:func:`ingest.api.publish_body` and
:func:`ingest.api.refusal`), so the answers are the same; every other request, and these routes
before the lifespan has built the service, go to the FastAPI application unchanged. Each
request gets a server span that continues the caller's ``traceparent``, as the instrumented
routes do, and the events' envelopes continue that span.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.datastructures import State
from tributary_kit.asgi_front import ASGIApp, ClientGone, Receive, Scope, Send, body_chunks, install_front

from ingest.api import publish_body, refusal, status_of
from ingest.errors import IngestError
from ingest.validation import Kind

log = logging.getLogger(__name__)

ROUTES: dict[str, Kind] = {"/v1/events/batch": "features", "/v1/labels/batch": "labels"}
_WANTED = {b"content-length", b"content-type", b"traceparent", b"tracestate"}
_JSON = [(b"content-type", b"application/json")]


class BatchRoutes:
    """ASGI wrapper answering the batch routes itself; everything else goes to ``app``.

    Args:
        app: the FastAPI application's whole middleware stack.
        state: the FastAPI application's state (the lifespan puts the service and settings there).
        tracer: tracer of the routes' server spans.
    """

    def __init__(self, app: ASGIApp, state: State, tracer: trace.Tracer) -> None:
        self.app = app
        self.state = state
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope."""
        kind = ROUTES.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        service = getattr(self.state, "service", None)
        if kind is None or service is None:
            await self.app(scope, receive, send)
            return
        settings = self.state.settings
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            if key in _WANTED:
                headers[key.decode("latin-1")] = value.decode("latin-1")
        extra: list[tuple[bytes, bytes]] = []
        route = scope["path"]
        with self.tracer.start_as_current_span(
            f"POST {route}", context=propagate.extract(headers), kind=SpanKind.SERVER,
            attributes={"http.method": "POST", "http.route": route, "http.target": route},
        ) as span:
            try:
                result = await publish_body(body_chunks(receive), kind, batch=True, service=service, settings=settings,
                                            declared=headers.get("content-length"),
                                            content_type=headers.get("content-type"))
                status = 200
                content = orjson.dumps({"total": result.total, "accepted": len(result.accepted), "rejected": 0})
            except ClientGone:
                log.info("client left before sending the whole body", extra={"path": route})
                span.set_attribute("http.status_code", 499)
                return
            except IngestError as exc:
                status, body, more = refusal(exc, settings)
                content = orjson.dumps(body)
                extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in more.items()]
            except Exception as exc:
                log.exception("batch request failed", extra={"path": route})
                status = status_of(exc)
                content = orjson.dumps({"error": "internal_error", "message": "internal error; see ingest's log"})
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            span.set_attribute("http.status_code", status)
            await send({"type": "http.response.start", "status": status,
                        "headers": [*_JSON, (b"content-length", str(len(content)).encode()), *extra]})
            await send({"type": "http.response.body", "body": content})


def install(app: Any, tracer: trace.Tracer) -> None:
    """Put :class:`BatchRoutes` in front of ``app``'s whole middleware stack (after instrumentation)."""
    install_front(app, lambda stack: BatchRoutes(stack, app.state, tracer))
