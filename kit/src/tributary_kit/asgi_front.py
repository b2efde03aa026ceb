"""Hot routes answered as plain ASGI in front of a web application's whole middleware stack.

A service's busiest route (ingest's batch routes, the gateway's v2 infer route) can cost less
per request when it is answered before the framework's routing, dependency resolution and
middleware; every other request goes to the application unchanged. This module holds what
those fronts share: the ASGI types, the body reader and the hook that puts a front in place.
It depends on no web framework: :func:`install_front` needs only the application's
``build_middleware_stack`` (Starlette and FastAPI have it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ClientGone(Exception):
    """The client disconnected before it had sent the whole request body."""


async def body_chunks(receive: Receive) -> AsyncIterator[bytes]:
    """The request body as it arrives, chunk by chunk (empty chunks skipped).

    Raises:
        ClientGone: the client disconnected before the last chunk.
    """
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone("the client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def install_front(app: Any, front: Callable[[ASGIApp], ASGIApp]) -> None:
    """Put ``front(stack)`` in front of ``app``'s whole middleware stack, whenever it is built.

    The stack is built lazily by Starlette (after instrumentation middleware was added), so the
    front wraps exactly what would otherwise serve the request.
    """
    build = app.build_middleware_stack

    def build_with_front() -> ASGIApp:
        return front(build())

    app.build_middleware_stack = build_with_front
