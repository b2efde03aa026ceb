"""Run the ingest service: ``python -m ingest`` (settings from ``INGEST_*`` variables)."""

from __future__ import annotations

import os
import shutil
import tempfile

import uvicorn
from tributary_kit.logs import configure_logging

from ingest.app import create_app
from ingest.settings import Settings


def main() -> None:
    """Read the settings from the environment and serve until stopped."""
    settings = Settings()
    configure_logging("ingest", settings.log_level, json_lines=settings.log_json)
    common: dict[str, object] = {"host": settings.host, "port": settings.port, "log_config": None,
                                 "access_log": False, "timeout_graceful_shutdown": 30}
    if settings.workers == 1:
        uvicorn.run(create_app(settings), **common)  # type: ignore[arg-type]
        return
    # Several processes on one port: each worker builds its own app (and clients) from the
    # environment; metrics are pooled in a directory every worker writes to.
    own_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="ingest-metrics-")
    for stale in os.listdir(metrics_dir):  # samples of an earlier run would add up with ours
        os.remove(os.path.join(metrics_dir, stale))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        uvicorn.run("ingest.app:create_app_from_env", factory=True, workers=settings.workers,
                    **common)  # type: ignore[arg-type]
    finally:
        if own_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
