"""Refusing v2 infer requests in the HTTP protocol itself, before any ASGI task exists.

Under an overload most requests are refused (at three times the sustainable rate, two in three),
and each refusal's CPU comes out of the admitted requests' on the gateway's one event loop. For
every request uvicorn builds its scope and a request-response cycle, starts a task, runs the ASGI
stack down to the v2 route (:mod:`inference.infer_asgi`), and writes the answer's head and body
in two writes. :func:`early_refusal_protocol` gives uvicorn an HTTP protocol that asks the core
(:meth:`InferenceService.shed`) as soon as a ``POST`` to a v2 infer path has its head parsed and,
when the gateway is at its limit, writes the whole 429 (the same body and ``Retry-After`` as the
ASGI route's) in one write and discards the request body as it arrives. Keep-alive connections stay
open for the next request. Anything else (other paths and methods, percent-encoded paths,
pipelined requests, before the lifespan built the core) goes through uvicorn unchanged.
"""

from __future__ import annotations

from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from inference.errors import Overloaded
from inference.infer_asgi import infer_target


class _NoEvent:
    def set(self) -> None:
        """Nothing waits on a refused request's body."""


class _Answered:
    """Stands for the request-response cycle of a request answered here: complete, so uvicorn skips its body."""

    response_complete = True
    keep_alive = True
    disconnected = False
    message_event = _NoEvent()


_ANSWERED = _Answered()


def early_refusal_protocol(state: Any, retry_after_s: int) -> type[HttpToolsProtocol]:
    """The httptools protocol of uvicorn, refusing v2 infer requests at the gateway's limit itself.

    Args:
        state: the application's state (the lifespan puts the core there as ``service``).
        retry_after_s: the ``Retry-After`` of the 429 (``INFERENCE_RETRY_AFTER_S``).

    """
    retry_after = str(retry_after_s).encode()

    class EarlyRefusal(HttpToolsProtocol):
        """See :mod:`inference.early_refusal`."""

        def on_headers_complete(self) -> None:
            if not self._refused():
                super().on_headers_complete()

        def _refused(self) -> bool:
            service = getattr(state, "service", None)
            if service is None or self.parser.get_method() != b"POST" or self.pipeline:
                return False
            if self.cycle is not None and not self.cycle.response_complete:
                return False   # a pipelined request behind one still being answered: uvicorn queues it
            path = self.url.split(b"?", 1)[0]
            if b"%" in path or infer_target(path.decode("latin-1")) is None:
                return False
            refusal = service.shed()
            if refusal is None:
                return False
            body = orjson.dumps({"error": refusal, "code": Overloaded.code})
            keep_alive = self.parser.should_keep_alive()
            head = [b"HTTP/1.1 429 Too Many Requests\r\n"]
            for name, value in self.server_state.default_headers:
                head += [name, b": ", value, b"\r\n"]
            head += [b"content-type: application/json\r\ncontent-length: ", str(len(body)).encode(),
                     b"\r\nretry-after: ", retry_after, b"\r\n"]
            if not keep_alive:
                head.append(b"connection: close\r\n")
            head += [b"\r\n", body]
            self.cycle = _ANSWERED  # type: ignore[assignment]
            self.transport.write(b"".join(head))
            if keep_alive:
                self.on_response_complete()
            else:
                self.server_state.total_requests += 1
                self.transport.close()
            return True

    return EarlyRefusal
