"""Run the drift service: ``python -m drift`` (settings from ``DRIFT_*`` variables)."""

from __future__ import annotations

import uvicorn
from tributary_kit.logs import configure_logging

from drift.app import create_app
from drift.settings import Settings


def main() -> None:
    """Read the settings from the environment and serve until stopped."""
    settings = Settings()
    configure_logging("drift", settings.log_level, json_lines=settings.log_json)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None,
                access_log=False, timeout_graceful_shutdown=30)


if __name__ == "__main__":
    main()
