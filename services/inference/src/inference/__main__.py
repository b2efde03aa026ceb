"""Run the gateway: ``python -m inference`` (settings from ``INFERENCE_*`` variables)."""

from __future__ import annotations

import uvicorn
from tributary_kit.logs import configure_logging

from inference.app import create_app
from inference.early_refusal import early_refusal_protocol
from inference.settings import Settings


def main() -> None:
    """Read the settings from the environment and serve until stopped."""
    settings = Settings()
    configure_logging("inference", settings.log_level, json_lines=settings.log_json)
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                timeout_graceful_shutdown=30, http=early_refusal_protocol(app.state, settings.retry_after_s))


if __name__ == "__main__":
    main()
