"""Request-scoped access to what the lifespan built."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from inference.aliases import AliasWriter
from inference.canary import CanaryAnalyzer
from inference.errors import Unauthorized
from inference.service import InferenceService
from inference.settings import Settings


def get_service(request: Request) -> InferenceService:
    """The inference core."""
    service: InferenceService = request.app.state.service
    return service


def get_settings(request: Request) -> Settings:
    """The settings the app was built with."""
    settings: Settings = request.app.state.settings
    return settings


def get_analyzer(request: Request) -> CanaryAnalyzer:
    """The canary analysis."""
    analyzer: CanaryAnalyzer = request.app.state.analyzer
    return analyzer


def get_aliases(request: Request) -> AliasWriter:
    """Who changes aliases: the registry, or this gateway when it has none."""
    aliases: AliasWriter = request.app.state.aliases
    return aliases


def get_operator(request: Request) -> str:
    """The operator calling a rollout route: checks the bearer token when one is configured.

    Raises:
        Unauthorized: a token is configured and the request does not carry it.

    """
    settings: Settings = request.app.state.settings
    if settings.operator_token is None:
        return request.headers.get("x-operator", "operator")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), settings.operator_token.encode()):
        raise Unauthorized("operator routes need 'Authorization: Bearer <INFERENCE_OPERATOR_TOKEN>'")
    return request.headers.get("x-operator", "operator")


ServiceDep = Annotated[InferenceService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
AnalyzerDep = Annotated[CanaryAnalyzer, Depends(get_analyzer)]
AliasesDep = Annotated[AliasWriter, Depends(get_aliases)]
OperatorDep = Annotated[str, Depends(get_operator)]
