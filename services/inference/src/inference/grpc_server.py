"""gRPC adapter: KServe v2 ``GRPCInferenceService``, so ``tritonclient.grpc`` works unchanged.

The service is tritonclient's generated ``GRPCInferenceServiceServicer``.

Only the generated protocol messages are imported from tritonclient here; calls to Triton
itself go through :mod:`inference.triton`. The stickiness key is the ``entity_id`` request
parameter or the ``x-tributary-entity`` metadata; the answer's trailing metadata carries
``x-tributary-model-version``, ``x-tributary-route``, ``x-tributary-backend`` and ``x-request-id``,
and its ``parameters`` the route and backend (``tributary_route``, ``tributary_backend``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from inference import __version__
from inference.errors import InferenceError, InvalidInput, ModelNotFound, Overloaded, http_status
from inference.routing import ModelRoute
from inference.service import InferenceService, InferRequest
from inference.tensors import NUMPY, Spec, Tensor, check_shape, from_raw, to_raw
from inference.triton import TritonBackend

log = logging.getLogger(__name__)

# The one mapping of HTTP statuses (errors.HTTP_STATUS) to gRPC codes.
GRPC_CODE: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    502: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

_CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def _tensor(inp: Any, raw: bytes | None) -> Tensor:
    shape = check_shape([int(d) for d in inp.shape], inp.name)
    if raw is not None:
        return from_raw(inp.name, inp.datatype, shape, raw)
    field = _CONTENTS.get(inp.datatype)
    if field is None:
        raise InvalidInput(f"tensor {inp.name!r}: datatype {inp.datatype!r} needs raw_input_contents")
    values = list(getattr(inp.contents, field))
    expected = math.prod(shape)
    if len(values) != expected:
        raise InvalidInput(f"tensor {inp.name!r}: shape {shape} needs {expected} values, contents has {len(values)}")
    array = np.array(values, dtype=NUMPY[inp.datatype]).reshape(shape)
    return Tensor(inp.name, inp.datatype, array)


def _param(params: Any, name: str) -> str | None:
    if name not in params:
        return None
    p = params[name]
    kind = p.WhichOneof("parameter_choice")
    return None if kind is None else str(getattr(p, kind))


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """The v2 gRPC service over :class:`~inference.service.InferenceService`."""

    def __init__(self, service: InferenceService, triton: TritonBackend) -> None:
        self.service = service
        self.triton = triton

    async def _abort(self, context: grpc.aio.ServicerContext, exc: InferenceError) -> None:
        await context.abort(GRPC_CODE.get(http_status(exc), grpc.StatusCode.INTERNAL), str(exc))

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Liveness."""
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Readiness."""
        ok, _ = await self.service.ready()
        return pb.ServerReadyResponse(ready=ok)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Server metadata."""
        return pb.ServerMetadataResponse(name="tributary-inference", version=__version__,
                                         extensions=["binary_tensor_data"])

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Whether the champion (or the named version) can answer now."""
        try:
            version = int(request.version) if request.version else None
            return pb.ModelReadyResponse(ready=await self.service.model_ready(request.name, version))
        except InferenceError:
            return pb.ModelReadyResponse(ready=False)
        except ValueError:
            return pb.ModelReadyResponse(ready=False)

    def _version(self, name: str, requested: str) -> tuple[ModelRoute, int]:
        """The rollout of ``name`` and the requested version (default: the champion), which it must hold."""
        route = self.service.rollout.route(name)
        try:
            version = int(requested) if requested else (route.champion or route.canary)
        except ValueError:
            raise InvalidInput(f"version {requested!r} is not an integer") from None
        if version is None or version not in route.versions:
            raise ModelNotFound(f"version {requested or '(champion)'} of {name!r} is not in its rollout "
                                f"{route.versions}")
        return route, version

    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Triton's configuration of the champion (or the named version of the rollout)."""
        try:
            _, version = self._version(request.name, request.version)
            return await self.triton.model_config(request.name, version)
        except InferenceError as exc:
            await self._abort(context, exc)
            raise  # unreachable: abort raises

    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Triton's statistics of the rollout's versions: of one model (one version if named), or of every model."""
        try:
            if request.name:
                route, version = self._version(request.name, request.version) if request.version else (
                    self.service.rollout.route(request.name), None)
                wanted = {request.name: {version} if version is not None else set(route.versions)}
            else:
                wanted = {m: set(r.versions) for m, r in self.service.rollout.table.items()}
            answer = pb.ModelStatisticsResponse()
            for model in sorted(wanted):
                try:
                    stats = await self.triton.model_statistics(model)
                except ModelNotFound:
                    if request.name:
                        raise
                    continue  # a rollout model Triton does not serve (yet): nothing to report
                answer.model_stats.extend(s for s in stats.model_stats
                                          if s.version.isdigit() and int(s.version) in wanted[model])
            return answer
        except InferenceError as exc:
            await self._abort(context, exc)
            raise  # unreachable: abort raises

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Metadata of the champion (or the named version) and the rollout's versions."""
        try:
            route, version = self._version(request.name, request.version)
            sig = await self.service.signature(request.name, version)
        except InferenceError as exc:
            await self._abort(context, exc)
            raise  # unreachable: abort raises

        def meta(s: Spec) -> Any:
            return pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=list(s.shape))

        return pb.ModelMetadataResponse(name=request.name, versions=[str(v) for v in route.versions],
                                        platform=sig.platform, inputs=[meta(s) for s in sig.inputs],
                                        outputs=[meta(s) for s in sig.outputs])

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Run the version the rollout routes this caller to (or the pinned one)."""
        try:
            refusal = self.service.shed()
            if refusal is not None:  # before the tensors are decoded: refusals under overload stay cheap
                raise Overloaded(refusal)
            raw = list(request.raw_input_contents)
            if raw and len(raw) != len(request.inputs):
                raise InvalidInput(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
            inputs = [_tensor(inp, raw[i] if raw else None) for i, inp in enumerate(request.inputs)]
            if not inputs:
                raise InvalidInput("the request has no inputs")
            try:
                version = int(request.model_version) if request.model_version else None
            except ValueError:
                raise InvalidInput(f"model_version {request.model_version!r} is not an integer") from None
            entity = _param(request.parameters, "entity_id")
            if entity is None:
                entity = dict(context.invocation_metadata() or ()).get("x-tributary-entity")
            result = await self.service.infer(InferRequest(
                model=request.model_name, inputs=inputs, outputs=[o.name for o in request.outputs] or None,
                entity=entity, version=version, request_id=request.id, protocol="grpc"))
        except InferenceError as exc:
            await self._abort(context, exc)
            raise  # unreachable: abort raises
        # Trailing metadata and response parameters travel with the answer; initial metadata
        # would cost a separate round through gRPC's completion queue on every request.
        context.set_trailing_metadata((("x-tributary-model-version", str(result.version)),
                                       ("x-tributary-route", result.route),
                                       ("x-tributary-backend", result.backend),
                                       ("x-request-id", result.request_id)))
        response = pb.ModelInferResponse(model_name=result.model, model_version=str(result.version), id=request.id)
        response.parameters["tributary_route"].string_param = result.route
        response.parameters["tributary_backend"].string_param = result.backend
        for t in result.outputs:
            response.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        response.raw_output_contents.extend(to_raw(t) for t in result.outputs)
        return response


def build_server(service: InferenceService, triton: TritonBackend, *, host: str, port: int) -> grpc.aio.Server:
    """The gRPC server (not started) serving :class:`InferenceServicer` on ``host:port``."""
    server = grpc.aio.server(options=[("grpc.max_send_message_length", 64 * 1024 * 1024),
                                      ("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(service, triton), server)
    server.add_insecure_port(f"{host}:{port}")
    return server
