"""The registry killed in the middle of an upload, on a full disk, and with an artifact altered on disk.

Pass criteria (plan K9, S5 free-disk guard, S7/S8 tamper detection; issue 8 "no partial version",
"clear error"):
- ``kill -9`` while the upload is staged and being validated: no version visible, the staged file
  is removed at the next start, the retried upload gives exactly one version, and every version's
  artifact hashes to its recorded sha256;
- a full artifact disk: 507 naming the full disk, no version, no staged file left, the registry
  stays ready and registers again once the model fits;
- a stored artifact altered on disk: its download is refused (never served), the others still are.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploy.localstack import ServiceProcess, free_port
from tests.reliability.processes import kill9, restart, wait_for

pytestmark = pytest.mark.integration


def linear_onnx(n_in: int, n_out: int, seed: int = 0) -> bytes:
    """``y = x @ W`` with a ``n_in x n_out`` float initializer (4 bytes a weight)."""
    w = numpy_helper.from_array(np.random.default_rng(seed).normal(size=(n_in, n_out)).astype(np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "linear",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_in])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n_out])],
                              initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="reliability")
    model.ir_version = 8
    return bytes(model.SerializeToString())


def metadata(n_in: int, n_out: int, command_id: str) -> str:
    return json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, n_in]}],
                       "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, n_out]}],
                       "params": {"command_id": command_id}})


class Registry:
    """A registry process on SQLite in ``root`` (optionally with its artifact folder on a small disk)."""

    def __init__(self, root: Path, kafka_bootstrap: str, *, small_disk: str | None = None) -> None:
        self.root = root
        self.port = free_port()
        self.artifacts = root / "artifacts"
        self.env = {"REGISTRY_DATA_DIR": str(root / "data"), "REGISTRY_ARTIFACT_DIR": str(self.artifacts),
                    "REGISTRY_KAFKA_BOOTSTRAP": kafka_bootstrap, "REGISTRY_PORT": str(self.port),
                    "REGISTRY_STALE_UPLOAD_S": "0", "REGISTRY_MAX_ARTIFACT_BYTES": str(64 * 1024 * 1024),
                    "REGISTRY_LOG_LEVEL": "INFO"}
        module = "registry"
        if small_disk is not None:
            self.env |= {"SMALL_DISK_DIR": str(self.artifacts), "SMALL_DISK_SIZE": small_disk,
                         "SMALL_DISK_MODULE": "registry"}
            module = "tests.reliability.in_small_disk"
        self.process = ServiceProcess("registry", module, self.env, ready_url=f"{self.url}/readyz",
                                      log_path=root / f"registry-{self.port}.log")
        self.process.start()
        cli = Path(sys.executable).with_name("tributary-registry-cli")
        done = subprocess.run([str(cli), "tokens", "create", "--name", "trainer-ci", "--role", "trainer"],
                              env=self.process.env, capture_output=True, text=True, timeout=60, check=True)
        self.token = done.stdout.strip().splitlines()[-1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def upload(self, name: str, data: bytes, meta: str, timeout_s: float = 120) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/models/{name}/versions", headers={"Authorization": f"Bearer {self.token}"},
                          files={"metadata": (None, meta, "application/json"),
                                 "artifact": ("model.onnx", data, "application/octet-stream")}, timeout=timeout_s)

    def versions(self, name: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/v1/models/{name}/versions", timeout=30)
        if response.status_code == 404:
            return []
        response.raise_for_status()
        return list(response.json()["data"])

    def staged(self) -> list[Path]:
        return sorted((self.artifacts / "tmp").glob("upload-*"))


def upload_in_background(registry: Registry, name: str, data: bytes, meta: str) -> list[Any]:
    import threading

    outcome: list[Any] = []

    def send() -> None:
        try:
            outcome.append(registry.upload(name, data, meta))
        except httpx.HTTPError as exc:
            outcome.append(exc)

    threading.Thread(target=send, daemon=True).start()
    return outcome


def test_kill_9_during_upload_leaves_no_partial_version_and_the_retry_registers_exactly_one(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    registry = Registry(tmp_path, kafka_bootstrap)
    try:
        name = "upload-crash"
        assert registry.upload(name, linear_onnx(4, 2), metadata(4, 2, "cmd-0")).status_code == 201
        big = linear_onnx(2048, 2048, seed=1)             # 16 MiB: staged, hashed, fsynced and validated
        outcome = upload_in_background(registry, name, big, metadata(2048, 2048, "cmd-1"))
        wait_for(registry.staged, "the upload to be staged in the store", 60, every_s=0.005)
        kill9(registry.process)
        wait_for(lambda: outcome, "the client to see the connection drop", 30)
        assert isinstance(outcome[0], httpx.HTTPError), outcome
        assert registry.staged(), "the killed process left its staged upload behind (the sweep has work)"

        restart(registry.process)
        assert registry.staged() == []                    # swept at start-up
        assert [v["version"] for v in registry.versions(name)] == [1]
        retried = registry.upload(name, big, metadata(2048, 2048, "cmd-1"))
        assert retried.status_code == 201, retried.text
        versions = registry.versions(name)
        assert [v["params"].get("command_id") for v in versions] == ["cmd-0", "cmd-1"]
        for v in versions:                                # every visible version is whole and matches its hash
            got = httpx.get(f"{registry.url}/v1/models/{name}/versions/{v['version']}/artifact", timeout=60)
            assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == v["sha256"]
        assert hashlib.sha256(big).hexdigest() == versions[1]["sha256"]
    finally:
        registry.process.stop()


def test_full_artifact_disk_is_a_clear_507_and_leaves_nothing(kafka_bootstrap: str, tmp_path: Path) -> None:
    registry = Registry(tmp_path, kafka_bootstrap, small_disk="3m")
    try:
        name = "disk-full"
        refused = registry.upload(name, linear_onnx(1024, 1024), metadata(1024, 1024, "cmd-big"))   # 4 MiB
        assert refused.status_code == 507, refused.text
        assert refused.json()["code"] == "insufficient_storage" and "disk is full" in refused.json()["error"]
        assert registry.versions(name) == []
        assert registry.staged() == []
        assert httpx.get(f"{registry.url}/readyz", timeout=10).status_code == 200
        fits = registry.upload(name, linear_onnx(16, 4), metadata(16, 4, "cmd-small"))
        assert fits.status_code == 201, fits.text
        assert [v["params"]["command_id"] for v in registry.versions(name)] == ["cmd-small"]
    finally:
        registry.process.stop()


def test_an_artifact_altered_on_disk_is_detected_by_its_sha256_and_never_served(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    registry = Registry(tmp_path, kafka_bootstrap)
    try:
        name = "tampered"
        for i in range(2):
            assert registry.upload(name, linear_onnx(8, 2, seed=i), metadata(8, 2, f"cmd-{i}")).status_code == 201
        first, second = registry.versions(name)
        blob = registry.artifacts / "sha256" / first["sha256"][:2] / first["sha256"]
        blob.chmod(0o644)
        data = bytearray(blob.read_bytes())
        data[-1] ^= 0x01                                   # one bit flipped in the stored model
        blob.write_bytes(bytes(data))
        refused = httpx.get(f"{registry.url}/v1/models/{name}/versions/1/artifact", timeout=30)
        assert refused.status_code == 500 and refused.json()["code"] == "artifact_corrupt", refused.text
        assert first["sha256"] in refused.json()["error"]
        served = httpx.get(f"{registry.url}/v1/models/{name}/versions/2/artifact", timeout=30)
        assert served.status_code == 200 and hashlib.sha256(served.content).hexdigest() == second["sha256"]
    finally:
        registry.process.stop()
