"""Alembic migrations of the registry database, and the function that applies them.

The service applies them at start-up (``REGISTRY_MIGRATE_ON_START``); operators can run the
same thing with ``tributary-registry-cli migrate`` or ``alembic -c services/registry/alembic.ini
upgrade head``. The application never creates tables any other way.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from registry.db import normalise_url

HERE = Path(__file__).resolve().parent


def alembic_config(url: str) -> Config:
    """An Alembic configuration for the database at ``url``."""
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["database_url"] = normalise_url(url)
    return config


def upgrade_to_head(url: str) -> None:
    """Bring the database at ``url`` to the newest schema (a no-op when it is current)."""
    command.upgrade(alembic_config(url), "head")
