"""HTTP adapter: the KServe v2 REST protocol, ``/v1/predict``, the operator API, health and metrics.

v2 infer bodies are read by hand (orjson, and the binary tensor extension that ``tritonclient.http``
uses by default: a JSON header of ``Inference-Header-Content-Length`` bytes followed by raw
tensors), so ``tritonclient.http`` works against the gateway unchanged. Every answer names the
version and route that produced it in ``X-Tributary-Model-Version`` and ``X-Tributary-Route``.
The stickiness key is the ``X-Tributary-Entity`` header or the ``entity_id`` request parameter.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from inference import __version__
from inference.aliases import AliasMove, AliasTarget, target_of
from inference.deps import AliasesDep, AnalyzerDep, OperatorDep, ServiceDep, SettingsDep
from inference.errors import InferenceError, InvalidInput, ModelNotFound, RolloutConflict, http_status
from inference.rollout import AliasChange
from inference.routing import ModelRoute
from inference.service import InferRequest, InferResult, PredictRequest
from inference.settings import Settings
from inference.tensors import Signature, Spec, Tensor, from_raw, from_values, to_list, to_raw

router = APIRouter()

ENTITY_HEADER = "x-tributary-entity"
_RETRY = {429, 503, 504}


class ErrorPublic(BaseModel):
    """Every refusal's body: what was wrong, a stable code, and for a malformed body each problem."""

    error: str = Field(description="What was wrong, in words.")
    code: str = Field(description="Stable machine-readable code (e.g. invalid_input, model_not_found).")
    problems: list[dict[str, Any]] | None = Field(default=None, description="Each bad field (422 only).")


_WHY: dict[int, str] = {
    400: "malformed tensors or features: wrong shape, datatype, names, or a body that is not a v2 request",
    401: "the operator token is missing or wrong",
    404: "the model has no rollout here, or the version is not one of its rollout's",
    409: "the rollout changed since `expected_revision`",
    422: "a parameter or body field fails its declared type or bounds; every problem is listed",
    429: "too many requests in flight or Triton's queue is full; retry after `Retry-After` seconds",
    502: "Triton failed running the model, or the registry refused the alias change",
    503: "Triton (and any fallback) or the registry is unreachable, Triton's circuit breaker is open, or Triton has "
         "not loaded the routed version; retry after `Retry-After` seconds",
    504: "Triton did not answer within the deadline; retry after `Retry-After` seconds",
}


def refusals(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route can answer, each with :class:`ErrorPublic`."""
    return {code: {"model": ErrorPublic, "description": _WHY[code]} for code in codes}


class ReadinessPublic(BaseModel):
    """A readiness answer (200 ready, 503 not) and why."""

    model_config = ConfigDict(extra="allow")

    reason: str | None = None


METADATA_REFUSALS = refusals(404, 422, 502, 503, 504)
INFER_REFUSALS = refusals(400, 404, 422, 429, 502, 503, 504)
NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {"model": ReadinessPublic, "description": "not ready, with the reason"}}

V2_INFER_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {
        "type": "object", "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object", "description": "e.g. entity_id (stickiness), binary_data_output"},
            "inputs": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name", "shape", "datatype"],
                "properties": {"name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
                               "datatype": {"type": "string"}, "parameters": {"type": "object"},
                               "data": {"type": "array", "description": "the tensor's values, row-major"}}}},
            "outputs": {"type": "array", "items": {
                "type": "object", "required": ["name"],
                "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}}}},
        }}},
    "application/octet-stream": {"schema": {
        "type": "string", "format": "binary",
        "description": "binary tensor extension: a JSON request of `Inference-Header-Content-Length` bytes, "
                       "then the raw tensors"}},
}}}
"""The v2 infer body in the OpenAPI document (the route reads the body itself: JSON or binary tensors)."""


async def on_inference_error(request: Request, exc: Exception) -> JSONResponse:
    """Answer a domain error as KServe does (``{"error": ...}``), with a code and Retry-After."""
    assert isinstance(exc, InferenceError)
    status = http_status(exc)
    headers = {}
    if status in _RETRY:
        settings: Settings = request.app.state.settings
        headers["Retry-After"] = str(settings.retry_after_s)
    return JSONResponse({"error": str(exc), "code": exc.code}, status_code=status, headers=headers)


# -- KServe v2: health and metadata -------------------------------------------------------------


@router.get("/v2/health/live", tags=["v2"])
async def live() -> dict[str, bool]:
    """Liveness: the process serves requests."""
    return {"live": True}


@router.get("/v2/health/ready", tags=["v2"], responses=NOT_READY)
async def ready(service: ServiceDep) -> JSONResponse:
    """Readiness: the rollout state is loaded and Triton (or the fallback) can serve."""
    ok, reason = await service.ready()
    return JSONResponse({"ready": ok, "reason": reason, "breaker": service.breaker.state},
                        status_code=200 if ok else 503)


@router.get("/v2", tags=["v2"])
async def server_metadata() -> dict[str, Any]:
    """Server metadata."""
    return {"name": "tributary-inference", "version": __version__, "extensions": ["binary_tensor_data"]}


def _spec_json(s: Spec) -> dict[str, Any]:
    return {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}


def _metadata(model: str, route: ModelRoute, signature: Signature) -> dict[str, Any]:
    return {"name": model, "versions": [str(v) for v in route.versions], "platform": signature.platform,
            "inputs": [_spec_json(s) for s in signature.inputs], "outputs": [_spec_json(s) for s in signature.outputs]}


@router.get("/v2/models/{name}", tags=["v2"], responses=METADATA_REFUSALS)
async def model_metadata(name: str, service: ServiceDep) -> dict[str, Any]:
    """Metadata of the model's champion version, and every version of its rollout."""
    route = service.rollout.route(name)
    version = route.champion or route.canary
    if version is None:
        raise ModelNotFound(f"model {name!r} has no champion version yet")
    return _metadata(name, route, await service.signature(name, version))


@router.get("/v2/models/{name}/versions/{version}", tags=["v2"], responses=METADATA_REFUSALS)
async def version_metadata(name: str, version: int, service: ServiceDep) -> dict[str, Any]:
    """Metadata of one version of the rollout."""
    route = service.rollout.route(name)
    if version not in route.versions:
        raise ModelNotFound(f"version {version} of {name!r} is not in its rollout {route.versions}")
    return _metadata(name, route, await service.signature(name, version))


@router.get("/v2/models/{name}/ready", tags=["v2"], responses={**refusals(404), **NOT_READY})
async def model_ready(name: str, service: ServiceDep) -> JSONResponse:
    """200 when the model's champion can answer now, 503 otherwise."""
    ok = await service.model_ready(name)
    return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)


@router.get("/v2/models/{name}/versions/{version}/ready", tags=["v2"],
             responses={**refusals(404, 422), **NOT_READY})
async def version_ready(name: str, version: int, service: ServiceDep) -> JSONResponse:
    """200 when this version of the rollout can answer now, 503 otherwise."""
    ok = await service.model_ready(name, version)
    return JSONResponse({"name": name, "version": str(version), "ready": ok}, status_code=200 if ok else 503)


# -- KServe v2: inference -----------------------------------------------------------------------


def _parse_infer(body: bytes, header_length: str | None) -> tuple[dict[str, Any], list[Tensor], list[str] | None,
                                                                  dict[str, bool], bool]:
    """The request document, its tensors, the requested outputs and how each output is wanted."""
    binary = b""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise InvalidInput("Inference-Header-Content-Length is not an integer") from None
        if not 0 <= n <= len(body):
            raise InvalidInput(f"Inference-Header-Content-Length {n} is outside the body of {len(body)} bytes")
        body, binary = body[:n], body[n:]
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise InvalidInput("request body must be a JSON object with a non-empty 'inputs' array")
    view = memoryview(binary)
    offset = 0
    inputs: list[Tensor] = []
    for item in doc["inputs"]:
        if not isinstance(item, dict):
            raise InvalidInput("every element of 'inputs' must be an object")
        name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
        params = item.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(view):
                raise InvalidInput(f"tensor {name!r}: binary_data_size {size!r} runs past the binary data")
            inputs.append(from_raw(str(name), datatype, shape, view[offset:offset + size]))
            offset += size
        else:
            if "data" not in item:
                raise InvalidInput(f"tensor {name!r} has neither 'data' nor a binary_data_size parameter")
            inputs.append(from_values(str(name), datatype, shape, item["data"]))
    if offset != len(view):
        raise InvalidInput(f"{len(view) - offset} bytes of binary data are not claimed by any input")
    params = doc.get("parameters") or {}
    binary_default = bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False
    wanted: list[str] | None = None
    binary_of: dict[str, bool] = {}
    if isinstance(doc.get("outputs"), list):
        wanted = []
        for o in doc["outputs"]:
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise InvalidInput("every element of 'outputs' must be an object with a 'name'")
            wanted.append(o["name"])
            oparams = o.get("parameters") or {}
            binary_of[o["name"]] = bool(oparams.get("binary_data", binary_default))
    return doc, inputs, wanted or None, binary_of, binary_default


def _answer(result: InferResult, doc: dict[str, Any], binary_of: dict[str, bool], binary_default: bool
            ) -> tuple[bytes, str, int | None]:
    """The v2 answer's body, its media type, and the JSON header's length when binary tensors follow."""
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for t in result.outputs:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if binary_of.get(t.name, binary_default):
            raw = to_raw(t)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = to_list(t)
        outputs.append(entry)
    answer: dict[str, Any] = {"model_name": result.model, "model_version": str(result.version), "outputs": outputs}
    if "id" in doc:
        answer["id"] = doc["id"]
    head = orjson.dumps(answer)
    if chunks:
        return b"".join([head, *chunks]), "application/octet-stream", len(head)
    return head, "application/json", None


def _answer_headers(result: InferResult) -> dict[str, str]:
    return {"X-Tributary-Model-Version": str(result.version), "X-Tributary-Route": result.route,
            "X-Tributary-Backend": result.backend, "X-Request-Id": result.request_id}


def _infer_request(name: str, version: int | None, body: bytes, header_length: str | None, entity_header: str | None,
                   traceparent: str | None = None) -> tuple[InferRequest, dict[str, Any], dict[str, bool], bool]:
    doc, inputs, wanted, binary_of, binary_default = _parse_infer(body, header_length)
    params = doc.get("parameters") if isinstance(doc.get("parameters"), dict) else {}
    entity = entity_header or (params or {}).get("entity_id")
    request_id = str(doc["id"]) if isinstance(doc.get("id"), str) else ""
    request = InferRequest(model=name, inputs=inputs, outputs=wanted, entity=None if entity is None else str(entity),
                           version=version, request_id=request_id, protocol="rest", traceparent=traceparent)
    return request, doc, binary_of, binary_default


async def _infer(name: str, version: int | None, request: Request, service: ServiceDep) -> Response:
    # Normally answered by V2InferRoute before FastAPI; this route documents it and serves as fallback.
    body = await request.body()
    infer_request, doc, binary_of, binary_default = _infer_request(
        name, version, body, request.headers.get("inference-header-content-length"),
        request.headers.get(ENTITY_HEADER))
    result = await service.infer(infer_request)
    content, media_type, head_length = _answer(result, doc, binary_of, binary_default)
    headers = _answer_headers(result)
    if head_length is not None:
        headers["Inference-Header-Content-Length"] = str(head_length)
    return Response(content, media_type=media_type, headers=headers)


@router.post("/v2/models/{name}/infer", tags=["v2"], responses=INFER_REFUSALS, openapi_extra=V2_INFER_BODY)
async def infer(name: str, request: Request, service: ServiceDep) -> Response:
    """Run the version the rollout routes this caller to (KServe v2 JSON or binary tensors)."""
    return await _infer(name, None, request, service)


@router.post("/v2/models/{name}/versions/{version}/infer", tags=["v2"], responses=INFER_REFUSALS,
             openapi_extra=V2_INFER_BODY)
async def infer_version(name: str, version: int, request: Request, service: ServiceDep) -> Response:
    """Run a version the caller pins (it must be one of the rollout's versions)."""
    return await _infer(name, version, request, service)


# -- /v1/predict ----------------------------------------------------------------------------------


class PredictionCreate(BaseModel):
    """Named features of one entity; missing ones are read from the online store."""

    model_config = ConfigDict(protected_namespaces=(), extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    entity_id: str = Field(min_length=1, max_length=256)
    features: dict[str, float | int | str | None] = Field(default_factory=dict, max_length=2048)
    dataset: str | None = None
    version: int | None = Field(default=None, ge=1)
    request_id: str = ""


class FeatureSources(BaseModel):
    """Where each feature the model used came from."""

    from_request: list[str]
    from_store: list[str]
    store_available: bool


class PredictionPublic(BaseModel):
    """The answer of ``/v1/predict``."""

    model_config = ConfigDict(protected_namespaces=())

    model: str
    version: int
    route: str
    request_id: str
    prediction: float | int | str | None
    outputs: dict[str, list[Any]]
    features: FeatureSources
    latency_ms: float


@router.post("/v1/predict", response_model=PredictionPublic, tags=["predict"], responses=INFER_REFUSALS)
async def predict(body: PredictionCreate, response: Response, service: ServiceDep) -> PredictionPublic:
    """Predict for one entity from named features, completed from the online store."""
    answer = await service.predict(PredictRequest(model=body.model, entity=body.entity_id, features=body.features,
                                                  dataset=body.dataset, version=body.version,
                                                  request_id=body.request_id))
    r = answer.result
    response.headers.update(_answer_headers(r))
    return PredictionPublic(model=r.model, version=r.version, route=r.route, request_id=r.request_id,
                            prediction=answer.prediction, outputs={t.name: to_list(t) for t in r.outputs},
                            features=FeatureSources(from_request=answer.from_request, from_store=answer.from_store,
                                                    store_available=answer.store_available),
                            latency_ms=r.latency_ms)


# -- operator API -----------------------------------------------------------------------------------


class RolloutPublic(BaseModel):
    """The rollout of one model."""

    model_config = ConfigDict(protected_namespaces=())

    model: str
    champion: int | None
    canary: int | None
    canary_weight: float
    shadow: int | None
    revision: int


class RolloutsPublic(BaseModel):
    """Every model's rollout, as this replica serves it."""

    rollouts: list[RolloutPublic]


class RolloutUpdate(BaseModel):
    """Point one alias at a version (or none); ``weight`` for the canary only."""

    alias: Literal["champion", "canary", "shadow"]
    version: int | None = Field(ge=1)
    weight: float | None = Field(default=None, ge=0, le=1)
    reason: str = Field(min_length=1, max_length=4096)
    expected_revision: int | None = Field(default=None, ge=0,
                                          description="Refuse (409) when the rollout changed since this revision.")


def _public(route: ModelRoute) -> RolloutPublic:
    return RolloutPublic(model=route.model, champion=route.champion, canary=route.canary,
                         canary_weight=route.canary_weight, shadow=route.shadow, revision=route.revision)


@router.get("/v1/rollout", response_model=RolloutsPublic, tags=["operator"])
async def list_rollouts(service: ServiceDep) -> RolloutsPublic:
    """Every model's rollout."""
    return RolloutsPublic(rollouts=[_public(r) for r in service.rollout.table.values()])


@router.get("/v1/rollout/{model}", response_model=RolloutPublic, tags=["operator"], responses=refusals(404))
async def get_rollout(model: str, service: ServiceDep) -> RolloutPublic:
    """One model's rollout."""
    return _public(service.rollout.route(model))


@router.put("/v1/rollout/{model}", response_model=RolloutPublic, tags=["operator"],
            responses={202: {"model": RolloutPublic,
                             "description": "the registry made the change; this replica does not serve it yet"},
                       **refusals(400, 401, 404, 409, 422, 502, 503)})
async def change_rollout(model: str, body: RolloutUpdate, service: ServiceDep, operator: OperatorDep,
                         aliases: AliasesDep, settings: SettingsDep) -> Response:
    """Change one alias on every replica.

    With a registry (the only writer of aliases) the change is made through the registry's API and
    reaches every replica as the registry's rollout event; the answer waits (up to
    ``registry_timeout_s``) until this replica serves it, else it is 202. Without a registry the
    change is applied to the shared table at once and published to the rollout topic.
    """
    change = AliasChange(body.alias, body.version, body.weight).checked()
    if aliases.owner == "gateway":
        route = await service.rollout.change(model, [change], changed_by=operator, reason=body.reason,
                                             origin="operator", expected_revision=body.expected_revision)
        return _json(_public(route))
    current = service.rollout.table.get(model)
    if body.expected_revision is not None and (current.revision if current else 0) != body.expected_revision:
        raise RolloutConflict(f"the rollout of {model!r} changed since revision {body.expected_revision}; "
                              "read it again (GET /v1/rollout/{model}) and retry")
    target = AliasTarget(change.version, change.weight)
    await aliases.move(model, [AliasMove(body.alias, target)], reason=body.reason,
                       changed_by=f"operator {operator} via the gateway")
    deadline = time.monotonic() + settings.registry_timeout_s
    while True:
        current = service.rollout.table.get(model)
        if current is not None and target_of(current, body.alias).same_as(target):
            return _json(_public(current))
        if time.monotonic() >= deadline:
            return _json(_public(current or ModelRoute(model)), status=202)
        await asyncio.sleep(0.02)


def _json(route: RolloutPublic, status: int = 200) -> Response:
    return Response(orjson.dumps(route.model_dump(mode="json")), status_code=status, media_type="application/json")


@router.get("/v1/canary/decisions", tags=["operator"])
async def canary_decisions(analyzer: AnalyzerDep) -> list[dict[str, Any]]:
    """The latest canary decisions of this replica (each also published on the decisions topic)."""
    return [d.model_dump(mode="json") for d in analyzer.decisions]


# -- operations -------------------------------------------------------------------------------------


@router.get("/healthz", tags=["operations"])
async def healthz() -> dict[str, str]:
    """Liveness."""
    return {"status": "ok"}


@router.get("/readyz", tags=["operations"], responses=NOT_READY)
async def readyz(service: ServiceDep, settings: SettingsDep) -> JSONResponse:
    """Readiness (as ``/v2/health/ready``)."""
    ok, reason = await service.ready()
    return JSONResponse({"status": "ready" if ok else "unavailable", "reason": reason,
                         "breaker": service.breaker.state}, status_code=200 if ok else 503)


@router.get("/metrics", tags=["operations"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
async def metrics_endpoint() -> Response:
    """Prometheus metrics."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
