"""The HTTP protocol that refuses v2 infer requests before any ASGI task (inference.early_refusal), on a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
import uvicorn
from inference.early_refusal import early_refusal_protocol


class _Core:
    """Stands for the core's ``shed()``: refuses while ``full``."""

    def __init__(self) -> None:
        self.full = True
        self.asked = 0

    def shed(self) -> str | None:
        self.asked += 1
        return "8 requests in flight (limit 8); retry shortly" if self.full else None


class _App:
    """An ASGI app that reads the whole body and answers 200 with what it got."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bytes]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.calls.append((scope["method"], scope["path"], body))
        answer = json.dumps({"path": scope["path"], "body": body.decode()}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


@contextlib.asynccontextmanager
async def _server(core: _Core | None) -> AsyncIterator[tuple[int, _App]]:
    app = _App()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state = SimpleNamespace() if core is None else SimpleNamespace(service=core)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False,
                                           lifespan="off", http=early_refusal_protocol(state, 3)))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield port, app
    finally:
        server.should_exit = True
        await task


def _request(path: str, body: bytes = b'{"inputs": []}', *, method: str = "POST", close: bool = False) -> bytes:
    head = (f"{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n")
    if close:
        head += "connection: close\r\n"
    return head.encode() + b"\r\n" + body


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status_line = await reader.readline()
    headers: dict[str, str] = {}
    while (line := await reader.readline()) != b"\r\n":
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


async def test_a_refused_infer_request_never_reaches_the_app_and_the_connection_serves_the_next() -> None:
    core = _Core()
    async with _server(core) as (port, app):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # A body larger than one read, to be discarded while the connection stays in step.
        writer.write(_request("/v2/models/credit/infer", b"x" * 100_000))
        await writer.drain()
        status, headers, body = await _answer(reader)
        assert status == 429 and headers["retry-after"] == "3" and headers["content-type"] == "application/json"
        assert json.loads(body) == {"error": "8 requests in flight (limit 8); retry shortly", "code": "overloaded"}
        assert "date" in headers and "connection" not in headers
        assert app.calls == []
        # Room again: the next request on the same connection reaches the app, body intact.
        core.full = False
        writer.write(_request("/v2/models/credit/versions/2/infer", b'{"n": 1}'))
        await writer.drain()
        status, _, body = await _answer(reader)
        assert status == 200 and json.loads(body) == {"path": "/v2/models/credit/versions/2/infer", "body": '{"n": 1}'}
        assert app.calls == [("POST", "/v2/models/credit/versions/2/infer", b'{"n": 1}')]
        writer.close()


async def test_pipelined_requests_are_refused_in_order_and_connection_close_is_kept() -> None:
    core = _Core()
    async with _server(core) as (port, app):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_request("/v2/models/a/infer", b"1") + _request("/v2/models/b/infer?x=1", b"22")
                     + _request("/v2/models/c/infer", b"333", close=True))
        await writer.drain()
        answers = [await _answer(reader) for _ in range(3)]
        assert [a[0] for a in answers] == [429, 429, 429]
        assert answers[2][1]["connection"] == "close"
        assert await reader.read() == b""   # the server closed the connection after the last
        assert app.calls == [] and core.asked == 3
        writer.close()


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v2/models/credit"), ("GET", "/v2/models/credit/infer"), ("POST", "/v1/predict"),
    ("POST", "/v2/models/cr%65dit/infer"), ("POST", "/v2/models/credit/versions/x/infer")])
async def test_other_requests_go_to_the_app_even_when_the_gateway_is_full(method: str, path: str) -> None:
    core = _Core()
    async with _server(core) as (port, app):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_request(path, b"{}", method=method))
        await writer.drain()
        status, _, _ = await _answer(reader)
        assert status == 200 and len(app.calls) == 1 and core.asked == 0
        writer.close()


async def test_before_the_core_exists_every_request_goes_to_the_app() -> None:
    async with _server(None) as (port, app):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_request("/v2/models/credit/infer"))
        await writer.drain()
        status, _, _ = await _answer(reader)
        assert status == 200 and app.calls == [("POST", "/v2/models/credit/infer", b'{"inputs": []}')]
        writer.close()
