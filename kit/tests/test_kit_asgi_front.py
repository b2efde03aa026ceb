"""The shared pieces of the services' plain-ASGI fronts: body reader and installation hook."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from tributary_kit.asgi_front import ASGIApp, ClientGone, Message, Receive, Scope, Send, body_chunks, install_front


def _receiver(messages: list[Message]) -> Receive:
    queue = list(messages)

    async def receive() -> Message:
        return queue.pop(0)

    return receive


async def test_body_chunks_yields_each_non_empty_chunk_until_the_last() -> None:
    receive = _receiver([
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"", "more_body": True},
        {"type": "http.request", "body": b"cd", "more_body": False},
        {"type": "http.request", "body": b"never read", "more_body": False},
    ])
    assert [c async for c in body_chunks(receive)] == [b"ab", b"cd"]


async def test_an_empty_body_gives_no_chunk() -> None:
    assert [c async for c in body_chunks(_receiver([{"type": "http.request"}]))] == []


async def test_a_disconnect_before_the_last_chunk_is_client_gone() -> None:
    receive = _receiver([{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.disconnect"}])
    seen: list[bytes] = []
    with pytest.raises(ClientGone, match="disconnected before sending the whole body"):
        async for chunk in body_chunks(receive):
            seen.append(chunk)
    assert seen == [b"ab"]


async def test_the_front_answers_its_route_and_passes_everything_else_to_the_application() -> None:
    app = FastAPI()

    @app.get("/other")
    async def other() -> dict[str, str]:
        return {"from": "application"}

    class Front:
        def __init__(self, stack: ASGIApp) -> None:
            self.stack = stack

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or scope["path"] != "/hot":
                await self.stack(scope, receive, send)
                return
            body = b"".join([c async for c in body_chunks(receive)])
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"front:" + body})

    install_front(app, Front)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        hot = await client.post("/hot", content=b"x" * 10)
        other_answer = await client.get("/other")
        missing = await client.get("/hot-not")
    assert (hot.status_code, hot.text) == (200, "front:" + "x" * 10)
    assert other_answer.json() == {"from": "application"}
    assert missing.status_code == 404


def test_install_front_wraps_the_stack_each_time_it_is_built() -> None:
    built: list[Any] = []
    app = FastAPI()
    install_front(app, lambda stack: built.append(stack) or stack)  # type: ignore[func-returns-value]
    app.build_middleware_stack()
    app.build_middleware_stack()
    assert len(built) == 2 and all(callable(s) for s in built)
