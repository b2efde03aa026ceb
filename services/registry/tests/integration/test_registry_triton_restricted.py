"""Triton's restricted APIs (reliability plan S9), against the real tritonserver.

Production Triton restricts model control and shared memory to callers with the admin header
(``--http-restricted-api`` / ``--grpc-restricted-protocol``); the registry is that caller. Here a
local Triton runs with the same flags: nobody without the secret may load a model or register
shared memory, over HTTP or gRPC, and the registry's control client with the secret can.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import pytest
import tritonclient.grpc as grpcclient
from registry.errors import TritonError
from registry.triton_repo import TritonControl, TritonRepository
from tritonclient.utils import InferenceServerException

from deploy.localstack import StartError
from deploy.triton import ADMIN_HEADER, TritonServer, python_backend_repository

from ..conftest import linear_onnx, linear_spec

SECRET = "s9-admin-secret"


@pytest.fixture(scope="module")
def restricted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """A Triton with the production restrictions, serving model ``fraud`` (not loaded yet)."""
    root = tmp_path_factory.mktemp("triton-restricted")
    registry_layout = TritonRepository(root / "registry-repo")
    registry_layout.write_version("fraud", 1, io.BytesIO(linear_onnx()))
    registry_layout.write_config("fraud", linear_spec().signature, versions=[1])
    python_backend_repository(root / "registry-repo", root / "repository")
    server = TritonServer(root / "repository", root / "work", admin_secret=SECRET)
    try:
        server.start()
    except StartError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


def test_model_control_without_the_secret_is_refused_over_http(restricted: TritonServer) -> None:
    for headers in ({}, {ADMIN_HEADER: "wrong"}, {"authorization": f"Bearer {SECRET}"}):
        response = httpx.post(f"{restricted.http_url}/v2/repository/models/fraud/load", json={}, headers=headers)
        assert response.status_code in (400, 403), response.text
        assert "restricted" in response.text.lower() or response.status_code == 403, response.text
    model = httpx.get(f"{restricted.http_url}/v2/models/fraud/ready")
    assert model.status_code != 200, "the refused load loaded the model anyway"


def test_shared_memory_without_the_secret_is_refused(restricted: TritonServer) -> None:
    body = {"key": "/tributary-s9", "offset": 0, "byte_size": 64}
    response = httpx.post(f"{restricted.http_url}/v2/systemsharedmemory/region/s9/register", json=body)
    assert response.status_code in (400, 403) and "restricted" in response.text.lower(), response.text
    status = httpx.get(f"{restricted.http_url}/v2/systemsharedmemory/status", headers={ADMIN_HEADER: SECRET})
    assert status.status_code == 200 and "s9" not in status.text


def test_model_control_without_the_secret_is_refused_over_grpc(restricted: TritonServer) -> None:
    client = grpcclient.InferenceServerClient(restricted.grpc_url)
    try:
        with pytest.raises(InferenceServerException, match=r"(?i)restricted|permission denied"):
            client.load_model("fraud")
        assert not client.is_model_ready("fraud")
    finally:
        client.close()


def test_the_registry_loads_with_the_secret_and_explains_a_missing_one(restricted: TritonServer) -> None:
    anonymous = TritonControl(restricted.http_url, timeout_s=60)
    try:
        with pytest.raises(TritonError, match="REGISTRY_TRITON_ADMIN_SECRET"):
            anonymous.load("fraud")
    finally:
        anonymous.close()
    admin = TritonControl(restricted.http_url, timeout_s=120, headers={ADMIN_HEADER: SECRET})
    try:
        admin.load("fraud")
        assert httpx.get(f"{restricted.http_url}/v2/models/fraud/ready").status_code == 200
        admin.unload("fraud")
    finally:
        admin.close()


def test_inference_needs_no_secret(restricted: TritonServer) -> None:
    """The restriction covers control and shared memory only: the gateway infers without the header."""
    control = TritonControl(restricted.http_url, timeout_s=120, headers={ADMIN_HEADER: SECRET})
    try:
        control.load("fraud")
    finally:
        control.close()
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [0.1, 0.2, 0.3]}]}
    response = httpx.post(f"{restricted.http_url}/v2/models/fraud/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [1, 1]
