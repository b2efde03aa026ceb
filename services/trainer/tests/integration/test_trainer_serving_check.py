"""The serving check before the canary, against a loopback KServe v2 server.

The server is a fake written for this test (the real Triton arrives with the inference
service): it downloads the version's ONNX from the real registry and serves it through
onnxruntime, optionally adding an offset to every output to play a serving engine that does
not reproduce the model.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import pytest
from trainer.ledger import Ledger
from trainer.onnx_model import OnnxModel
from trainer.service import TrainerService, new_command
from trainer.settings import Settings

from .conftest import Registry

pytestmark = pytest.mark.integration

TYPES = {"FP32": np.float32, "INT64": np.int64}


class FakeTriton(ThreadingHTTPServer):
    """``/v2/models/{m}/versions/{v}/ready`` and ``.../infer`` (binary inputs) over registry artifacts."""

    def __init__(self, registry_url: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.registry_url = registry_url
        self.offset = 0.0
        self.requests: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def model(self, name: str, version: str) -> OnnxModel | None:
        response = httpx.get(f"{self.registry_url}/v1/models/{name}/versions/{version}/artifact", timeout=30)
        return OnnxModel(response.content) if response.status_code == 200 else None


class _Handler(BaseHTTPRequestHandler):
    server: FakeTriton

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        parts = self.path.strip("/").split("/")  # v2 models m versions v ready
        ready = len(parts) == 6 and parts[-1] == "ready" and self.server.model(parts[2], parts[4]) is not None
        self._answer(200 if ready else 404, {"ready": ready})

    def do_POST(self) -> None:
        parts = self.path.strip("/").split("/")
        body = self.rfile.read(int(self.headers["Content-Length"]))
        head_len = int(self.headers.get("Inference-Header-Content-Length", len(body)))
        header = json.loads(body[:head_len])
        self.server.requests.append(header)
        model = self.server.model(parts[2], parts[4])
        if model is None:
            self._answer(404, {"error": "unknown model"})
            return
        inputs, at = {}, head_len
        for spec in header["inputs"]:
            size = spec["parameters"]["binary_data_size"]
            array = np.frombuffer(body[at:at + size], dtype=TYPES[spec["datatype"]])
            inputs[spec["name"]] = array.reshape(spec["shape"])
            at += size
        out = model.run(inputs) + self.server.offset
        name = header["outputs"][0]["name"]
        self._answer(200, {"model_name": parts[2], "outputs": [
            {"name": name, "datatype": "FP32", "shape": list(out.shape), "data": out.reshape(-1).tolist()}]})


@pytest.fixture
def triton(registry: Registry) -> Iterator[FakeTriton]:
    server = FakeTriton(registry.url)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_the_served_model_must_reproduce_the_onnx_outputs_before_the_canary(
        settings: Settings, registry: Registry, triton: FakeTriton, dataset: Callable[..., str],
        make_rows: Callable[..., list[dict[str, Any]]], unique: str) -> None:
    from trainer.app import build_service

    service: TrainerService = build_service(settings.model_copy(update={"triton_url": triton.url}), Ledger())
    model = f"m-{unique}"
    try:
        good = service.run(new_command(model_name=model, dataset=dataset(make_rows(400, seed=61)), reason="manual",
                                       requested_by="test"))
        decided = next(p.payload for p in good.events if p.topic == settings.decisions_topic)
        assert good.status == "promoted"
        serving = decided.serving  # type: ignore[attr-defined]
        assert serving.status == "passed" and serving.sample_source == "holdout" and serving.samples == 64
        assert serving.max_abs_diff <= 1e-4
        assert triton.requests[-1]["inputs"][0]["datatype"] == "FP32"
        assert registry.get(f"/v1/models/{model}/aliases/canary")["version"] == 1
        assert registry.get(f"/v1/models/{model}/aliases/shadow") is None  # the staging alias was restored

        triton.offset = 0.01  # a serving engine that does not reproduce the model
        bad = service.run(new_command(model_name=model, dataset=dataset(make_rows(400, seed=62)), reason="drift",
                                      requested_by="test"))
        decided = next(p.payload for p in bad.events if p.topic == settings.decisions_topic)
        assert bad.status == "blocked" and decided.decision == "blocked"  # type: ignore[attr-defined]
        assert decided.serving.status == "failed"  # type: ignore[attr-defined]
        assert "differ from onnxruntime" in decided.serving.reason  # type: ignore[attr-defined]
        assert any("canary alias was not set" in r for r in decided.reasons)  # type: ignore[attr-defined]
        assert registry.get(f"/v1/models/{model}/aliases/canary")["version"] == 1  # rollout blocked
        completed = next(p.payload for p in bad.events if p.topic == settings.completed_topic)
        assert completed.outcome == "blocked" and completed.version == 2  # type: ignore[attr-defined]
    finally:
        service.registry.close()
        if service.triton is not None:
            service.triton.close()
