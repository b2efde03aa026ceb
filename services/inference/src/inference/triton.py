"""Triton through tritonclient's asyncio gRPC client: the only module that imports tritonclient.

A small pool of gRPC channels is kept open for the process's lifetime and used round-robin.
Every call has a deadline; tritonclient's errors are translated here into the gateway's own
(:mod:`inference.errors`), so nothing above this module knows tritonclient exists.
"""

from __future__ import annotations

import itertools
from typing import Any

import grpc
from tritonclient.grpc import InferenceServerException
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.grpc.aio import InferenceServerClient

from inference.errors import (
    BackendFailed,
    BackendTimeout,
    BackendUnavailable,
    InferenceError,
    InvalidInput,
    ModelNotFound,
    Overloaded,
)
from inference.tensors import Signature, Spec, Tensor, from_raw, to_raw
from inference.triton_http import TritonHttpInfer, TritonRefused

# Reconnect fast after Triton restarts: gRPC's default backoff grows to two minutes.
_CHANNEL_ARGS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


class TritonBackend:
    """Runs model versions on a Triton server.

    Args:
        url: Triton's gRPC endpoint, ``host:port``.
        connections: gRPC channels in the pool.
        timeout_s: default deadline of metadata and health calls.
        http_url: Triton's HTTP endpoint; when given, inference calls use it (:mod:`inference.triton_http`)
            and everything else stays on gRPC.

    """

    name = "triton"

    def __init__(self, url: str, *, connections: int = 2, timeout_s: float = 2.0, http_url: str | None = None
                 ) -> None:
        self.url = url
        self._http = TritonHttpInfer(http_url) if http_url else None
        self.timeout_s = timeout_s
        self._clients = [InferenceServerClient(url, channel_args=_CHANNEL_ARGS)]
        self._next = itertools.cycle(self._clients)
        self._channels = [grpc.aio.insecure_channel(url, options=_CHANNEL_ARGS) for _ in range(connections)]
        self._stubs = itertools.cycle([pb_grpc.GRPCInferenceServiceStub(c) for c in self._channels])

    async def close(self) -> None:
        """Close every channel."""
        for client in self._clients:
            await client.close()
        for channel in self._channels:
            await channel.close()
        if self._http is not None:
            await self._http.close()

    async def infer(self, model: str, version: int, inputs: list[Tensor], outputs: list[str] | None, *,
                    timeout_s: float, request_id: str = "") -> list[Tensor]:
        """Run ``version`` of ``model`` on ``inputs``; the requested outputs (all when None).

        The request is built straight from the protocol messages (raw tensor bytes), not through
        tritonclient's ``InferInput``/``InferResult`` wrappers: on the hot path they cost more
        than the call itself.

        Raises:
            InvalidInput, ModelNotFound, Overloaded, BackendUnavailable, BackendTimeout, BackendFailed.

        """
        if self._http is not None:
            try:
                return await self._http.infer(model, version, inputs, outputs, timeout_s=timeout_s,
                                              request_id=request_id)
            except TritonRefused as exc:
                raise _translate(exc.status, exc.message, model=model, version=version) from None
        request = pb.ModelInferRequest(model_name=model, model_version=str(version), id=request_id)
        for t in inputs:
            request.inputs.add(name=t.name, datatype=t.datatype, shape=t.array.shape)
            request.raw_input_contents.append(to_raw(t))
        if outputs:
            for name in outputs:
                request.outputs.add(name=name)
        try:
            response = await next(self._stubs).ModelInfer(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _translate(str(exc.code()), exc.details() or "", model=model, version=version) from None
        raw = response.raw_output_contents
        if len(raw) != len(response.outputs):
            raise BackendFailed(f"Triton returned {len(response.outputs)} outputs of {model} v{version} with "
                                f"{len(raw)} raw contents")
        try:
            return [from_raw(o.name, o.datatype, list(o.shape), raw[i]) for i, o in enumerate(response.outputs)]
        except InvalidInput as exc:
            raise BackendFailed(f"Triton returned an unreadable output of {model} v{version}: {exc}") from None

    async def model_config(self, model: str, version: int) -> Any:
        """Triton's ``ModelConfigResponse`` of one version (the protocol message, forwarded as is).

        Raises:
            ModelNotFound, BackendUnavailable, BackendTimeout.

        """
        try:
            return await next(self._stubs).ModelConfig(pb.ModelConfigRequest(name=model, version=str(version)),
                                                       timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _translate(str(exc.code()), exc.details() or "", model=model, version=version) from None

    async def model_statistics(self, model: str) -> Any:
        """Triton's ``ModelStatisticsResponse`` for every loaded version of ``model``.

        Raises:
            ModelNotFound, BackendUnavailable, BackendTimeout.

        """
        try:
            return await next(self._stubs).ModelStatistics(pb.ModelStatisticsRequest(name=model),
                                                           timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _translate(str(exc.code()), exc.details() or "", model=model, version=0) from None

    async def signature(self, model: str, version: int) -> Signature:
        """Inputs, outputs and maximum batch size of a loaded version.

        Raises:
            ModelNotFound, BackendUnavailable, BackendTimeout.

        """
        client = next(self._next)
        try:
            meta: Any = await client.get_model_metadata(model, str(version), as_json=True,
                                                        client_timeout=self.timeout_s)
            config: Any = await client.get_model_config(model, str(version), as_json=True,
                                                        client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise _translate(str(exc.status() or ""), str(exc.message() or exc), model=model,
                             version=version) from None
        return Signature(
            inputs=[Spec(i["name"], i["datatype"], tuple(int(d) for d in i.get("shape", []))) for i in meta["inputs"]],
            outputs=[Spec(o["name"], o["datatype"], tuple(int(d) for d in o.get("shape", [])))
                     for o in meta["outputs"]],
            max_batch_size=int(config.get("config", {}).get("max_batch_size", 0)),
            platform=str(meta.get("platform", "")),
            dynamic_batching="dynamic_batching" in config.get("config", {}),
        )

    async def ready(self) -> bool:
        """Whether Triton answers and says it is ready."""
        try:
            return bool(await next(self._next).is_server_ready(client_timeout=self.timeout_s))
        except InferenceServerException:
            return False

    async def model_ready(self, model: str, version: int) -> bool:
        """Whether ``version`` of ``model`` is loaded and ready in Triton."""
        try:
            return bool(await next(self._next).is_model_ready(model, str(version), client_timeout=self.timeout_s))
        except InferenceServerException:
            return False


def _translate(status: str, message: str, *, model: str, version: int) -> InferenceError:
    lower = message.lower()
    where = f"{model} v{version}"
    if "queue size" in lower:
        return Overloaded(f"Triton's queue for {where} is full: {message}")
    if "request timeout expired" in lower:
        # The request waited past the model's queue timeout (``default_timeout_microseconds``,
        # REJECT): Triton answered, its queue is overloaded. Shed (429), not a sign of a dead
        # server: counting it as one would open the breaker under load and refuse everything.
        return Overloaded(f"Triton's queue for {where} held the request past its queue timeout: {message}")
    if "DEADLINE_EXCEEDED" in status or "deadline exceeded" in lower:
        return BackendTimeout(f"Triton did not answer for {where} in time; retry later")
    if "unknown model" in lower or "not found" in lower or "NOT_FOUND" in status:
        return ModelNotFound(f"Triton does not serve {where}: {message}")
    if "not ready" in lower or "not at ready state" in lower:
        return ModelNotFound(f"{where} is not loaded in Triton: {message}")
    if "UNAVAILABLE" in status or "failed to connect" in lower or "connection refused" in lower:
        return BackendUnavailable(f"Triton at the configured URL is unreachable ({message})")
    if "INVALID_ARGUMENT" in status:
        return InvalidInput(f"Triton refused the request for {where}: {message}")
    return BackendFailed(f"Triton failed on {where}: {message}")
