"""Run the registry HTTP service: ``python -m registry`` or ``tributary-registry``.

Reads ``REGISTRY_*`` settings from the environment (see :mod:`registry.settings`).
"""

from __future__ import annotations

import uvicorn
from tributary_kit.logs import configure_logging

from registry.app import create_app
from registry.settings import Settings


def main() -> None:
    """Parse settings, build the app, serve it until interrupted."""
    settings = Settings()
    configure_logging("registry", settings.log_level)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None)


if __name__ == "__main__":
    main()
