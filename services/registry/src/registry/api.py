"""HTTP routes of the registry: thin adapters over :class:`registry.service.RegistryService`.

Reads are open; every change needs a bearer token with the right role. Errors are answered by
the handler in :mod:`registry.app` as ``{"error": "...", "code": "..."}``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from schemas.signing import ArtifactSignature
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from registry.deps import PrincipalDep, ServiceDep, SettingsDep
from registry.domain import AliasChange, AliasState, Model, ModelVersion, Role, VersionSpec
from registry.errors import ArtifactTooLarge, InvalidRequest, PermissionDenied
from registry.names import ALIASES, MODEL_NAME_MAX, NAME_PATTERN, check_model_name
from registry.storage import read_chunks

router = APIRouter(prefix="/v1")

MAX_VERSION = 2**31 - 1
"""The highest version number: versions are stored as 32-bit integers (SQLite and PostgreSQL alike),
so a larger number in a request is refused as invalid (422) before it reaches the database."""
VersionNumber = Annotated[int, Path(ge=1, le=MAX_VERSION, description="Version number, from 1 (at most 2^31 - 1).")]
ModelName = Annotated[str, Path(
    description="Model name: 1-128 characters from a-z, 0-9, '_' and '-', starting with a letter or digit "
                "(any other name is answered 400, naming the rule).",
    json_schema_extra={"pattern": f"^{NAME_PATTERN}$", "maxLength": MODEL_NAME_MAX})]
"""A model name in a path. The rule is documented, not enforced here: the service checks it and
answers 400 with its own message instead of a generic validation error."""
AliasName = Annotated[str, Path(description="Alias: champion, canary or shadow (anything else is answered 400).",
                                json_schema_extra={"enum": list(ALIASES)})]
"""An alias in a path (documented; checked by the service)."""

MULTIPART_OVERHEAD = 64 * 1024
"""Bytes allowed on top of the artifact and metadata limits for multipart boundaries and headers."""


class ErrorPublic(BaseModel):
    """Every refusal and failure: what went wrong, and a stable code to branch on."""

    error: str = Field(description="What went wrong and what to do about it.")
    code: str = Field(description="Stable machine-readable reason, e.g. `model_not_found`.")


_WHY: dict[int, str] = {
    400: "an invalid model name, alias or request body",
    401: "no valid bearer token (`WWW-Authenticate: Bearer`)",
    403: "the token lacks the role this change needs",
    404: "the model, version, alias or artifact does not exist",
    409: "conflicts with what is registered, or (`promotion_failed`) Triton refused to load the version the alias "
         "was moved to, and the alias was moved back",
    412: "the alias changed since the `If-Match` ETag was read",
    413: "the upload is over the artifact limit",
    422: "the model was refused by validation or its signature check",
    500: "the stored artifact no longer matches its sha256 (never served)",
    502: "Triton refused or failed the reload",
    503: "storage is unavailable; retry",
    507: "the artifact store is full",
}


def refusals(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route can answer, each with :class:`ErrorPublic`."""
    return {code: {"model": ErrorPublic, "description": _WHY[code]} for code in codes}


READ = refusals(400, 404, 503)
UPLOAD_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {"multipart/form-data": {
    "schema": {
        "type": "object",
        "required": ["metadata", "artifact"],
        "properties": {
            "metadata": {"type": "string", "contentMediaType": "application/json",
                         "description": "The version's spec as JSON (``VersionSpec``: signature, metrics, lineage)."},
            "artifact": {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream",
                         "description": "The ONNX model; validated (checker, opsets, a test run) before it is stored."},
            "signature": {"type": "string", "contentMediaType": "application/json",
                          "description": "Optional ``ArtifactSignature`` as JSON; required when the registry "
                                         "requires signed artifacts."},
        },
    },
}}}}
"""The upload's body in the OpenAPI document: the route reads the multipart stream itself (with size
limits and the name and token checked first), so FastAPI cannot describe it from a signature."""
CHANGE = refusals(400, 401, 403, 404, 409, 412, 502, 503)


class VersionPublic(ModelVersion):
    """A registered version, as the API returns it."""

    artifact_url: str = Field(description="Path of the artifact download (ETag = sha256).")


class VersionsPublic(BaseModel):
    """Versions of a model, oldest first."""

    data: list[VersionPublic]
    count: int


class ModelPublic(Model):
    """A registered model, as the API returns it."""


class ModelsPublic(BaseModel):
    """Every registered model."""

    data: list[ModelPublic]
    count: int


class AliasUpdate(BaseModel):
    """Move an alias."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=MAX_VERSION)
    weight: float | None = Field(default=None, description="Canary traffic share in (0, 1]; only for canary.")
    reason: str = Field(min_length=1, max_length=4096, description="Why; recorded in the audit log.")


class AliasRollback(BaseModel):
    """Roll an alias back."""

    model_config = ConfigDict(extra="forbid")

    to_version: int | None = Field(default=None, ge=1, le=MAX_VERSION,
                                   description="Default: the alias's previous version.")
    reason: str = Field(min_length=1, max_length=4096)


class AliasPublic(AliasState):
    """Where an alias points."""


class AliasChangePublic(AliasChange):
    """One recorded alias change."""


class AliasChangesPublic(BaseModel):
    """The audit log of an alias, oldest first."""

    data: list[AliasChangePublic]
    count: int


def _public(version: ModelVersion) -> VersionPublic:
    return VersionPublic(
        **version.model_dump(),
        artifact_url=f"/v1/models/{version.model_name}/versions/{version.version}/artifact",
    )


@router.get("/models", responses=refusals(503))
async def list_models(service: ServiceDep) -> ModelsPublic:
    """Every registered model with its aliases."""
    models = await run_in_threadpool(service.list_models)
    return ModelsPublic(data=[ModelPublic(**m.model_dump()) for m in models], count=len(models))


@router.get("/models/{name}", responses=READ)
async def get_model(name: ModelName, service: ServiceDep) -> ModelPublic:
    """One model with its aliases and latest version number."""
    model = await run_in_threadpool(service.get_model, name)
    return ModelPublic(**model.model_dump())


@router.get("/models/{name}/versions", responses=READ)
async def list_versions(name: ModelName, service: ServiceDep) -> VersionsPublic:
    """Every version of a model, oldest first."""
    versions = await run_in_threadpool(service.list_versions, name)
    return VersionsPublic(data=[_public(v) for v in versions], count=len(versions))


@router.post("/models/{name}/versions", status_code=201, openapi_extra=UPLOAD_BODY,
             responses=refusals(400, 401, 403, 404, 409, 413, 422, 502, 503, 507))
async def register_version(
    name: ModelName, request: Request, service: ServiceDep, settings: SettingsDep, actor: PrincipalDep
) -> VersionPublic:
    """Register the next version of a model (trainer role).

    The body is ``multipart/form-data`` with two parts: ``metadata`` (JSON, see ``VersionSpec``)
    and ``artifact`` (the ONNX file), and optionally a third, ``signature`` (JSON, see
    ``schemas.signing.ArtifactSignature``; required when the registry requires signatures).
    The name and the token are checked before the body is read.
    """
    check_model_name(name)
    if Role.TRAINER not in actor.roles:
        raise PermissionDenied(f"{actor.name!r} may not register versions: it needs the 'trainer' role")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest("send multipart/form-data with a 'metadata' JSON part and an 'artifact' file part")
    limit = settings.max_artifact_bytes + settings.max_metadata_bytes + MULTIPART_OVERHEAD
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ArtifactTooLarge(f"upload of {declared} bytes is over the limit of {settings.max_artifact_bytes} "
                               "bytes for the artifact; shrink the model or raise REGISTRY_MAX_ARTIFACT_BYTES")
    parser = MultiPartParser(request.headers, _limited(request.stream(), limit), max_files=1, max_fields=2,
                             max_part_size=settings.max_metadata_bytes)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidRequest(f"could not read the multipart body: {exc.message}") from exc
    try:
        metadata, artifact = form.get("metadata"), form.get("artifact")
        if not isinstance(metadata, str):
            raise InvalidRequest("the 'metadata' part (JSON text) is missing")
        if not isinstance(artifact, UploadFile):
            raise InvalidRequest("the 'artifact' file part is missing")
        try:
            spec = VersionSpec.model_validate_json(metadata)
        except ValidationError as exc:
            raise InvalidRequest(f"metadata is not valid: {_summary(exc)}") from exc
        signature = _signature(form.get("signature"))
        version = await run_in_threadpool(
            service.register_version, name=name, spec=spec, artifact=read_chunks(artifact.file), actor=actor,
            signature=signature,
        )
    finally:
        await form.close()
    return _public(version)


def _signature(part: object) -> ArtifactSignature | None:
    """The upload's ``signature`` part, validated; None when absent."""
    if part is None:
        return None
    if not isinstance(part, str):
        raise InvalidRequest("the 'signature' part must be JSON text, not a file")
    try:
        return ArtifactSignature.model_validate_json(part)
    except ValidationError as exc:
        raise InvalidRequest(f"signature is not valid: {_summary(exc)}") from exc


@router.get("/models/{name}/versions/{version}", responses=READ)
async def get_version(name: ModelName, version: VersionNumber, service: ServiceDep) -> VersionPublic:
    """One version with its lineage."""
    return _public(await run_in_threadpool(service.get_version, name, version))


@router.get("/models/{name}/versions/{version}/artifact", response_model=None,
            responses={200: {"content": {"application/octet-stream": {}}, "description": "the ONNX file"},
                       304: {"description": "`If-None-Match` names this artifact"}, **refusals(400, 404, 500, 503)})
async def download_artifact(
    name: ModelName, version: VersionNumber, request: Request, service: ServiceDep
) -> Response | StreamingResponse:
    """The version's ONNX file. ``ETag`` is its quoted sha256; ``If-None-Match`` gives 304."""
    found, stream = await run_in_threadpool(service.open_artifact, name, version)
    etag = f'"{found.sha256}"'
    headers = {"ETag": etag, "Cache-Control": "public, max-age=31536000, immutable"}
    wanted = {t.strip().removeprefix("W/") for t in request.headers.get("if-none-match", "").split(",")}
    if etag in wanted or "*" in wanted:
        stream.close()
        return Response(status_code=304, headers=headers)
    headers["Content-Length"] = str(found.size_bytes)
    headers["Content-Disposition"] = f'attachment; filename="{found.model_name}-{found.version}.onnx"'
    return StreamingResponse(_chunks(stream), media_type="application/octet-stream", headers=headers)


@router.get("/models/{name}/aliases/{alias}", responses=READ)
async def get_alias(name: ModelName, alias: AliasName, service: ServiceDep, response: Response) -> AliasPublic:
    """Where an alias points; ``ETag`` is its target, for a conditional change (``If-Match``)."""
    state = await run_in_threadpool(service.get_alias, name, alias)
    response.headers["ETag"] = state.etag
    return AliasPublic(**state.model_dump())


@router.get("/models/{name}/aliases/{alias}/version", responses=READ)
async def resolve_alias(name: ModelName, alias: AliasName, service: ServiceDep) -> VersionPublic:
    """The version an alias points at (deploy by alias)."""
    state = await run_in_threadpool(service.get_alias, name, alias)
    return _public(await run_in_threadpool(service.get_version, name, state.version))


IfMatch = Annotated[str | None, Header(
    description='Change only if the alias still has this ETag (`"none"` when unset); 412 otherwise.')]


@router.put("/models/{name}/aliases/{alias}", responses=CHANGE)
async def set_alias(name: ModelName, alias: AliasName, body: AliasUpdate, service: ServiceDep,
                    actor: PrincipalDep, if_match: IfMatch = None) -> AliasChangePublic:
    """Point an alias at a version (operator role); recorded and published.

    With a Triton configured, the model is reloaded with the new serving set. When Triton refuses
    to load the version (its repository index shows it ``UNAVAILABLE``), the registry moves the
    alias back to its previous version (or removes it), records and publishes that change too,
    marks the version ``serving.state = "failed"`` with Triton's reason, and answers 409
    ``promotion_failed``; the versions that served before keep serving.
    """
    change = await run_in_threadpool(
        service.set_alias, name=name, alias=alias, version=body.version, weight=body.weight, reason=body.reason,
        actor=actor, if_match=if_match,
    )
    return AliasChangePublic(**change.model_dump())


@router.delete("/models/{name}/aliases/{alias}", responses=CHANGE)
async def remove_alias(
    name: ModelName, alias: AliasName, service: ServiceDep, actor: PrincipalDep,
    reason: Annotated[str, Query(min_length=1, max_length=4096, description="Why; recorded.")],
    if_match: IfMatch = None,
) -> AliasChangePublic:
    """Make an alias point nowhere (operator role); recorded and published."""
    change = await run_in_threadpool(service.remove_alias, name=name, alias=alias, reason=reason, actor=actor,
                                     if_match=if_match)
    return AliasChangePublic(**change.model_dump())


@router.post("/models/{name}/aliases/{alias}/rollback", responses=CHANGE)
async def rollback_alias(name: ModelName, alias: AliasName, body: AliasRollback, service: ServiceDep,
                         actor: PrincipalDep) -> AliasChangePublic:
    """Point an alias back at an earlier version (operator role); recorded and published."""
    change = await run_in_threadpool(
        service.rollback, name=name, alias=alias, reason=body.reason, actor=actor, to_version=body.to_version
    )
    return AliasChangePublic(**change.model_dump())


@router.get("/models/{name}/history", responses=READ)
async def history(
    name: ModelName, service: ServiceDep,
    alias: Annotated[str | None, Query(description="Only this alias (champion, canary or shadow).",
                                       json_schema_extra={"enum": list(ALIASES)})] = None
) -> AliasChangesPublic:
    """The audit log of alias changes: who, when, from which version to which, and why."""
    changes = await run_in_threadpool(service.alias_history, name, alias)
    return AliasChangesPublic(data=[AliasChangePublic(**c.model_dump()) for c in changes], count=len(changes))


@router.post("/models/{name}/triton/sync", status_code=204, responses=CHANGE)
async def sync_triton(name: ModelName, service: ServiceDep, actor: PrincipalDep) -> None:
    """Rewrite the model's Triton repository directory and reload it in Triton (operator role)."""
    if Role.OPERATOR not in actor.roles:
        raise PermissionDenied(f"{actor.name!r} may not reload models: it needs the 'operator' role")
    await run_in_threadpool(service.get_model, name)
    await run_in_threadpool(service.sync_triton, name)


async def _limited(stream: AsyncIterator[bytes], limit: int) -> AsyncGenerator[bytes, None]:
    received = 0
    async for chunk in stream:
        received += len(chunk)
        if received > limit:
            raise ArtifactTooLarge(f"upload is over the limit of {limit} bytes; shrink the model or raise "
                                   "REGISTRY_MAX_ARTIFACT_BYTES")
        yield chunk


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    with stream:
        yield from read_chunks(stream)


def _summary(exc: ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '<body>'}: {e['msg']}" for e in exc.errors()[:10]]
    return "; ".join(parts)
