"""Request-scoped access to what the lifespan built.

The getters are coroutines on purpose: FastAPI runs plain-function dependencies in a thread
pool, a thread hand-off per request for what is an attribute lookup.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from tributary_kit.producer import AsyncProducer

from ingest.service import IngestService
from ingest.settings import Settings
from ingest.specs import SpecCatalogue


async def get_service(request: Request) -> IngestService:
    """The ingest core."""
    service: IngestService = request.app.state.service
    return service


async def get_catalogue(request: Request) -> SpecCatalogue:
    """The dataset spec catalogue."""
    catalogue: SpecCatalogue = request.app.state.catalogue
    return catalogue


async def get_producer(request: Request) -> AsyncProducer:
    """The process's Kafka producer."""
    producer: AsyncProducer = request.app.state.producer
    return producer


async def get_settings(request: Request) -> Settings:
    """The settings the app was built with."""
    settings: Settings = request.app.state.settings
    return settings


ServiceDep = Annotated[IngestService, Depends(get_service)]
CatalogueDep = Annotated[SpecCatalogue, Depends(get_catalogue)]
ProducerDep = Annotated[AsyncProducer, Depends(get_producer)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
