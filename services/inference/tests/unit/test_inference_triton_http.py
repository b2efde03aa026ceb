"""The HTTP infer client without Triton: kept connections, a server that closed one, deadlines, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np
import orjson
import pytest
from inference.errors import (
    BackendFailed,
    BackendTimeout,
    BackendUnavailable,
    InvalidInput,
    ModelNotFound,
    Overloaded,
)
from inference.tensors import Tensor
from inference.triton import TritonBackend
from inference.triton_http import TritonHttpInfer, TritonRefused

from deploy.localstack import free_port

X = Tensor("x", "FP32", np.array([[1.0, 2.0]], dtype=np.float32))


def _answer(status: int, doc: dict[str, object], raw: bytes = b"") -> bytes:
    head = orjson.dumps(doc)
    extra = f"Inference-Header-Content-Length: {len(head)}\r\n" if raw else ""
    return (f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(head) + len(raw)}\r\n\r\n").encode() + head + raw


def _ok(request: bytes) -> bytes:
    """Triton's answer: ``y`` = twice the input row (binary), echoing the request id."""
    head, _, _ = request.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"inference-header-content-length")))
    body = request.split(b"\r\n\r\n", 1)[1]
    doc = orjson.loads(body[:length])
    values = np.frombuffer(body[length:], dtype="<f4") * 2
    out = {"model_name": "m", "model_version": "1", "id": doc.get("id", ""),
           "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 2],
                        "parameters": {"binary_data_size": values.nbytes}}]}
    return _answer(200, out, values.astype("<f4").tobytes())


class _Server:
    """A one-answer-per-request HTTP server; ``reply`` makes each answer (None: never answer)."""

    def __init__(self, reply: Callable[[bytes], bytes | None]) -> None:
        self.reply = reply
        self.connections = 0
        self.requests: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                size = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                if line.lower().startswith(b"content-length")))
                request = head + await reader.readexactly(size)
                self.requests.append(request)
                answer = self.reply(request)
                if answer is not None:
                    writer.write(answer)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def drop_all(self) -> None:
        """Close every connection from the server's side (as a restarted Triton would)."""
        for w in self.writers:
            w.close()


Serve = Callable[[Callable[[bytes], bytes | None]], Awaitable[tuple[_Server, str]]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[asyncio.Server] = []

    async def start(reply: Callable[[bytes], bytes | None]) -> tuple[_Server, str]:
        fake = _Server(reply)
        server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return fake, f"http://127.0.0.1:{port}"

    yield start
    for s in servers:
        s.close()


async def test_calls_reuse_one_kept_connection_and_send_binary_tensors(serve: Serve) -> None:
    fake, url = await serve(_ok)
    client = TritonHttpInfer(url)
    try:
        for i in range(3):
            out = await client.infer("m", 1, [X], None, timeout_s=2, request_id=f"r-{i}")
            np.testing.assert_array_equal(out[0].array, [[2.0, 4.0]])
        assert fake.connections == 1
        first = fake.requests[0]
        assert first.startswith(b"POST /v2/models/m/versions/1/infer HTTP/1.1\r\n")
        assert b'"binary_data_output":true' in first and b'"id":"r-0"' in first
    finally:
        await client.close()


async def test_a_connection_the_server_closed_is_replaced_and_the_call_sent_again(serve: Serve) -> None:
    fake, url = await serve(_ok)
    client = TritonHttpInfer(url)
    try:
        await client.infer("m", 1, [X], None, timeout_s=2)
        fake.drop_all()
        await asyncio.sleep(0.05)
        out = await client.infer("m", 1, [X], None, timeout_s=2)
        np.testing.assert_array_equal(out[0].array, [[2.0, 4.0]])
        assert fake.connections == 2
    finally:
        await client.close()


async def test_no_answer_in_time_is_a_timeout_and_the_connection_is_not_kept(serve: Serve) -> None:
    answers = iter([None, "ok"])
    fake, url = await serve(lambda r: None if next(answers) is None else _ok(r))
    client = TritonHttpInfer(url)
    try:
        with pytest.raises(BackendTimeout):
            await client.infer("m", 1, [X], None, timeout_s=0.2)
        out = await client.infer("m", 1, [X], None, timeout_s=2)
        np.testing.assert_array_equal(out[0].array, [[2.0, 4.0]])
        assert fake.connections == 2  # a late answer on the first connection can never be mistaken for this one
    finally:
        await client.close()


async def test_unreachable_triton_is_backend_unavailable() -> None:
    client = TritonHttpInfer(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(BackendUnavailable):
        await client.infer("m", 1, [X], None, timeout_s=2)


@pytest.mark.parametrize(("status", "message", "error"), [
    (400, "unexpected shape for input 'x'", InvalidInput),
    (404, "Request for unknown model: 'm' version 9 is not found", ModelNotFound),
    (500, "onnxruntime failed", BackendFailed),
    (503, "failed to connect to the model instance", BackendUnavailable),
    (503, "Exceeds maximum queue size", Overloaded),
    (503, "Request timeout expired", Overloaded),
])
async def test_triton_errors_are_translated_like_grpc_ones(serve: Serve, status: int, message: str,
                                                          error: type[Exception]) -> None:
    _, url = await serve(lambda r: _answer(status, {"error": message}))
    client = TritonHttpInfer(url)
    with pytest.raises(TritonRefused):
        await client.infer("m", 1, [X], None, timeout_s=2)
    await client.close()
    backend = TritonBackend(f"127.0.0.1:{free_port()}", http_url=url)
    try:
        with pytest.raises(error):
            await backend.infer("m", 1, [X], None, timeout_s=2)
    finally:
        await backend.close()


async def test_an_unreadable_answer_is_backend_failed(serve: Serve) -> None:
    _, url = await serve(lambda r: _answer(200, {"outputs": [{"name": "y"}]}))
    client = TritonHttpInfer(url)
    try:
        with pytest.raises(BackendFailed):
            await client.infer("m", 1, [X], None, timeout_s=2)
    finally:
        await client.close()


def test_only_http_urls_are_taken() -> None:
    with pytest.raises(ValueError, match="http://host:port"):
        TritonHttpInfer("https://triton:8000")
    assert TritonHttpInfer("triton:8000").port == 8000
