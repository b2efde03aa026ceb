"""The v2 infer route as plain ASGI, in front of the FastAPI application.

``POST /v2/models/{name}/infer`` and ``POST /v2/models/{name}/versions/{v}/infer`` are the
gateway's hot path. FastAPI's routing, dependency resolution, exception middleware and the
generic OpenTelemetry ASGI middleware cost more per request than everything the gateway itself
does, so :class:`V2InferRoute` answers these two routes directly: it reads the body, parses it
with the same code as the FastAPI route (:mod:`inference.api`), calls the core and writes the
answer. Every other request, and these routes before the lifespan has built the core, go to the
FastAPI application unchanged. The core's ``inference.infer`` span continues the caller's
``traceparent`` header, so traces are kept. Under ``python -m inference`` most refusals at the
gateway's limit never get here: the HTTP protocol answers them first (:mod:`inference.early_refusal`).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.datastructures import State
from tributary_kit.asgi_front import ASGIApp, ClientGone, Receive, Scope, Send, body_chunks, install_front

from inference.api import ENTITY_HEADER, _answer, _infer_request
from inference.errors import InferenceError, InvalidInput, Overloaded, http_status

log = logging.getLogger(__name__)

_PREFIX = "/v2/models/"
_SUFFIX = "/infer"
_RETRY = {429, 503, 504}
_WANTED = {b"inference-header-content-length", ENTITY_HEADER.encode(), b"traceparent", b"content-length"}


def infer_target(path: str) -> tuple[str, int | None] | None:
    """The model and pinned version of an infer path, or None for any other path.

    >>> infer_target("/v2/models/credit/infer"), infer_target("/v2/models/credit/versions/2/infer")
    (('credit', None), ('credit', 2))
    >>> infer_target("/v2/models/credit/versions/x/infer") is None, infer_target("/v2/models/credit") is None
    (True, True)
    """
    if not (path.startswith(_PREFIX) and path.endswith(_SUFFIX)):
        return None
    parts = path[len(_PREFIX):-len(_SUFFIX)].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2].isdigit():
        return parts[0], int(parts[2])
    return None


class V2InferRoute:
    """ASGI wrapper answering the v2 infer routes itself; everything else goes to ``app``.

    Args:
        app: the FastAPI application's middleware stack.
        state: the FastAPI application's state (the lifespan puts the core and settings there).
        max_body_bytes: largest request body read; larger ones are refused with 413.

    """

    def __init__(self, app: ASGIApp, state: State, *, max_body_bytes: int = 64 * 1024 * 1024) -> None:
        self.app = app
        self.state = state
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope."""
        target = None
        if scope["type"] == "http" and scope["method"] == "POST":
            target = infer_target(scope["path"])
        service = getattr(self.state, "service", None)
        if target is None or service is None:
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = {}
        for key, value in scope["headers"]:
            if key in _WANTED:
                headers[key] = value
        status = 200
        extra: list[tuple[bytes, bytes]] = []
        try:
            refusal = service.shed()
            if refusal is not None:  # before the body is read or decoded (uvicorn discards an unread body)
                raise Overloaded(refusal)
            body = await self._body(receive, headers.get(b"content-length"))
            length = headers.get(b"inference-header-content-length")
            entity = headers.get(ENTITY_HEADER.encode())
            traceparent = headers.get(b"traceparent")
            request, doc, binary_of, binary_default = _infer_request(
                target[0], target[1], body, None if length is None else length.decode("latin-1"),
                None if entity is None else entity.decode("latin-1"),
                None if traceparent is None else traceparent.decode("latin-1"))
            result = await service.infer(request)
            content, media_type, head_length = _answer(result, doc, binary_of, binary_default)
            extra = [(b"x-tributary-model-version", str(result.version).encode()),
                     (b"x-tributary-route", result.route.encode()), (b"x-tributary-backend", result.backend.encode()),
                     (b"x-request-id", result.request_id.encode("latin-1", "replace"))]
            if head_length is not None:
                extra.append((b"inference-header-content-length", str(head_length).encode()))
        except _TooLarge as exc:
            status, media_type = 413, "application/json"
            content = orjson.dumps({"error": str(exc), "code": "too_large"})
        except InferenceError as exc:
            status, media_type = http_status(exc), "application/json"
            content = orjson.dumps({"error": str(exc), "code": exc.code})
            if status in _RETRY:
                extra.append((b"retry-after", str(self.state.settings.retry_after_s).encode()))
        except Exception:
            log.exception("v2 infer failed", extra={"path": scope["path"]})
            status, media_type = 500, "application/json"
            content = orjson.dumps({"error": "internal error; see the gateway's log", "code": "internal_error"})
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", media_type.encode()),
                                (b"content-length", str(len(content)).encode()), *extra]})
        await send({"type": "http.response.body", "body": content})

    async def _body(self, receive: Receive, declared: bytes | None) -> bytes:
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise _TooLarge(f"request body of {int(declared)} bytes is over the limit of {self.max_body_bytes}")
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in body_chunks(receive):
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise _TooLarge(f"request body is over the limit of {self.max_body_bytes} bytes")
                chunks.append(chunk)
        except ClientGone as exc:
            raise InvalidInput(str(exc)) from exc
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _TooLarge(Exception):
    pass


def install(app: Any) -> None:
    """Put :class:`V2InferRoute` in front of ``app``'s whole middleware stack (after instrumentation)."""
    install_front(app, lambda stack: V2InferRoute(stack, app.state))
