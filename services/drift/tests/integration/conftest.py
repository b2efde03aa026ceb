"""The drift service as a real process against the real broker, with a loopback stand-in registry."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from deploy.localstack import ServiceProcess, free_port


class StubRegistry:
    """Answers ``GET /v1/models/<m>/versions/<v>`` from a dict, like the registry's API."""

    def __init__(self) -> None:
        self.versions: dict[tuple[str, int], dict[str, Any]] = {}
        self.port = free_port()
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                body = None
                if len(parts) == 5 and parts[:2] == ["v1", "models"] and parts[3] == "versions":
                    body = registry.versions.get((parts[2], int(parts[4])))
                data = json.dumps(body or {"error": "not found"}).encode()
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_registry() -> Iterator[StubRegistry]:
    registry = StubRegistry()
    try:
        yield registry
    finally:
        registry.close()


@pytest.fixture
def make_drift(kafka_bootstrap: str, stub_registry: StubRegistry, tmp_path: Path
               ) -> Callable[..., tuple[ServiceProcess, int]]:
    """Builds (not starts) a drift process: ``make_drift(app_id, port=None, **env)``."""

    def build(app_id: str, port: int | None = None, **extra: str) -> tuple[ServiceProcess, int]:
        port = port or free_port()
        return drift_process(kafka_bootstrap, stub_registry.url, tmp_path, app_id, port, **extra), port

    return build


def drift_process(kafka_bootstrap: str, registry_url: str, tmp_path: Path, app_id: str, port: int,
                  **extra: str) -> ServiceProcess:
    """A drift service process with small windows."""
    env = {
        "DRIFT_KAFKA_BOOTSTRAP": kafka_bootstrap, "DRIFT_APP_ID": app_id, "DRIFT_PORT": str(port),
        "DRIFT_REGISTRY_URL": registry_url, "DRIFT_STATE_DIR": str(tmp_path / "state"), "DRIFT_LOG_JSON": "false",
        "DRIFT_WINDOW_SIZE": "100", **extra,
    }
    return ServiceProcess("drift", "drift", env, ready_url=f"http://127.0.0.1:{port}/readyz",
                          log_path=tmp_path / f"drift-{port}.log")
