"""Request-scoped dependencies of the HTTP API, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from registry.domain import Principal
from registry.service import RegistryService
from registry.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="A registry token: `Authorization: Bearer trb_...`.")


def get_service(request: Request) -> RegistryService:
    """The app's registry service (built by the lifespan)."""
    service: RegistryService = request.app.state.service
    return service


def get_settings(request: Request) -> Settings:
    """The app's settings."""
    settings: Settings = request.app.state.settings
    return settings


ServiceDep = Annotated[RegistryService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_principal(
    service: ServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The holder of the request's bearer token; refuses the request (401) without a valid one."""
    token = credentials.credentials if credentials is not None else None
    return await run_in_threadpool(service.authenticate, token)


PrincipalDep = Annotated[Principal, Depends(get_principal)]
