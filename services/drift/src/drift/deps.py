"""Request-scoped access to what the lifespan built."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from drift.service import DriftService


def get_service(request: Request) -> DriftService:
    """The drift core."""
    service: DriftService = request.app.state.service
    return service


ServiceDep = Annotated[DriftService, Depends(get_service)]
