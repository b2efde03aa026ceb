"""Alembic environment: runs migrations online against the URL the caller configured.

The URL comes from ``config.attributes["database_url"]`` (set by
:func:`registry.migrations.alembic_config`) or, for the ``alembic`` command line, from the
``REGISTRY_DATABASE_URL`` environment variable.
"""

from __future__ import annotations

import os

from alembic import context

from registry.db import Base, make_engine, normalise_url

config = context.config
url = config.attributes.get("database_url") or os.environ.get("REGISTRY_DATABASE_URL")
if not url:
    raise SystemExit("set REGISTRY_DATABASE_URL to the registry database URL")

engine = make_engine(normalise_url(url))
try:
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
finally:
    engine.dispose()
