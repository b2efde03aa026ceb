"""Request-scoped access to what the lifespan built."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from tributary_kit.producer import AsyncProducer

from trainer.ledger import Ledger
from trainer.settings import Settings


def get_producer(request: Request) -> AsyncProducer:
    """The process's Kafka producer."""
    producer: AsyncProducer = request.app.state.producer
    return producer


def get_ledger(request: Request) -> Ledger:
    """The outcomes of retrain commands."""
    ledger: Ledger = request.app.state.ledger
    return ledger


def get_settings(request: Request) -> Settings:
    """The settings the app was built with."""
    settings: Settings = request.app.state.settings
    return settings


ProducerDep = Annotated[AsyncProducer, Depends(get_producer)]
LedgerDep = Annotated[Ledger, Depends(get_ledger)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
