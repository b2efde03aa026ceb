"""The HTTP API end to end: a real app (lifespan, migrations, producer, drainer) on SQLite and
PostgreSQL with the real Kafka broker. Every refusal is checked to leave nothing registered."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from registry.app import create_app
from registry.settings import Settings

pytestmark = pytest.mark.integration


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client(settings: Settings, tokens: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _upload(client: TestClient, token: str | None, data: bytes, metadata: str, name: str = "fraud",
            ) -> object:
    headers = _auth(token) if token else {}
    return client.post(f"/v1/models/{name}/versions", headers=headers,
                       files={"artifact": ("model.onnx", data, "application/octet-stream")},
                       data={"metadata": metadata})


def _assert_nothing_registered(client: TestClient, settings: Settings) -> None:
    assert client.get("/v1/models").json() == {"data": [], "count": 0}
    artifacts = settings.artifact_root
    assert not any(p.is_file() for p in (artifacts / "sha256").rglob("*"))
    assert list((artifacts / "tmp").iterdir()) == []


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    assert "registry_versions_registered_total" in client.get("/metrics").text


def test_register_read_and_download(client: TestClient, tokens: dict[str, str], make_onnx: Callable[..., bytes],
                                    spec_json: Callable[..., str]) -> None:
    data = make_onnx()
    response = _upload(client, tokens["trainer"], data, spec_json())
    assert response.status_code == 201, response.text  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    sha = hashlib.sha256(data).hexdigest()
    assert (body["model_name"], body["version"], body["sha256"], body["size_bytes"]) == ("fraud", 1, sha, len(data))
    assert body["created_by"] == "trainer-ci" and body["opset"] == 17
    assert body["training_window"]["offsets"][0]["topic"] == "ingest.feature-event.v1"
    assert body["artifact_url"] == "/v1/models/fraud/versions/1/artifact"
    assert client.get("/v1/models/fraud/versions/1").json() == body
    assert client.get("/v1/models/fraud/versions").json()["count"] == 1
    assert client.get("/v1/models").json()["data"][0]["latest_version"] == 1

    download = client.get(body["artifact_url"])
    assert download.status_code == 200 and download.content == data
    assert download.headers["etag"] == f'"{sha}"'
    assert download.headers["content-type"] == "application/octet-stream"
    cached = client.get(body["artifact_url"], headers={"If-None-Match": f'"{sha}"'})
    assert cached.status_code == 304 and cached.content == b""
    assert client.get(body["artifact_url"], headers={"If-None-Match": '"other"'}).status_code == 200
    assert client.get(body["artifact_url"], headers={"If-None-Match": f'W/"{sha}", "x"'}).status_code == 304


def test_writes_need_a_valid_token_with_the_right_role(
    client: TestClient, settings: Settings, tokens: dict[str, str], make_onnx: Callable[..., bytes],
    spec_json: Callable[..., str],
) -> None:
    data, meta = make_onnx(), spec_json()
    missing = _upload(client, None, data, meta)
    assert missing.status_code == 401  # type: ignore[attr-defined]
    assert missing.headers["www-authenticate"] == "Bearer"  # type: ignore[attr-defined]
    assert missing.json()["code"] == "not_authenticated"  # type: ignore[attr-defined]
    assert _upload(client, "trb_made-up", data, meta).status_code == 401  # type: ignore[attr-defined]
    assert _upload(client, tokens["revoked"], data, meta).status_code == 401  # type: ignore[attr-defined]
    basic = client.post("/v1/models/fraud/versions", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status_code == 401
    wrong_role = _upload(client, tokens["operator"], data, meta)
    assert wrong_role.status_code == 403  # type: ignore[attr-defined]
    assert "trainer" in wrong_role.json()["error"]  # type: ignore[attr-defined]
    _assert_nothing_registered(client, settings)

    assert _upload(client, tokens["trainer"], data, meta).status_code == 201  # type: ignore[attr-defined]
    move = {"version": 1, "reason": "ship it"}
    assert client.put("/v1/models/fraud/aliases/champion", json=move).status_code == 401
    assert client.put("/v1/models/fraud/aliases/champion", json=move, headers=_auth(tokens["trainer"])).status_code \
        == 403
    assert client.put("/v1/models/fraud/aliases/champion", json=move, headers=_auth(tokens["operator"])).status_code \
        == 200
    assert client.delete("/v1/models/fraud/aliases/champion", params={"reason": "x"}).status_code == 401
    assert client.post("/v1/models/fraud/aliases/champion/rollback", json={"reason": "x"}).status_code == 401
    assert client.post("/v1/models/fraud/triton/sync", headers=_auth(tokens["trainer"])).status_code == 403


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("garbage", 422, "invalid_model"),
        ("empty", 422, "invalid_model"),
        ("opset", 422, "opset_not_allowed"),
        ("signature", 422, "signature_mismatch"),
        ("oversized", 413, "artifact_too_large"),
        ("bad_metadata_json", 400, "invalid_request"),
        ("bad_metadata_field", 400, "invalid_request"),
        ("unknown_metadata_field", 400, "invalid_request"),
        ("no_metadata", 400, "invalid_request"),
        ("no_artifact", 400, "invalid_request"),
        ("not_multipart", 400, "invalid_request"),
        ("two_files", 400, "invalid_request"),
    ],
)
def test_refused_uploads_say_why_and_leave_nothing(
    client: TestClient, settings: Settings, tokens: dict[str, str], make_onnx: Callable[..., bytes],
    spec_json: Callable[..., str], case: str, status: int, code: str,
) -> None:
    data, meta = make_onnx(), spec_json()
    headers = _auth(tokens["trainer"])
    files: dict[str, tuple[str, bytes, str]] | list[tuple[str, tuple[str, bytes, str]]] = {}
    content: bytes | None = None
    if case == "garbage":
        data = b"PK\x03\x04 this is a zip, not onnx" * 10
    elif case == "empty":
        data = b""
    elif case == "opset":
        data = make_onnx(opset=22)
    elif case == "signature":
        meta = spec_json(n_in=7)
    elif case == "oversized":
        data = data + b"\x00" * (settings.max_artifact_bytes + 1)
    elif case == "bad_metadata_json":
        meta = "{not json"
    elif case == "bad_metadata_field":
        meta = json.dumps({**json.loads(meta), "inputs": [{"name": "x", "datatype": "FLOAT99", "shape": [-1, 3]}]})
    elif case == "unknown_metadata_field":
        meta = json.dumps({**json.loads(meta), "artifact_path": "/etc/passwd"})
    form: dict[str, str] = {} if case == "no_metadata" else {"metadata": meta}
    if case == "not_multipart":
        content = data
    if case == "two_files":
        files = [("artifact", ("a.onnx", data, "application/octet-stream")),
                 ("artifact", ("b.onnx", data, "application/octet-stream"))]
    elif case != "no_artifact":
        files = {"artifact": ("model.onnx", data, "application/octet-stream")}
    if content is not None:
        response = client.post("/v1/models/fraud/versions", headers={**headers,
                               "Content-Type": "application/octet-stream"}, content=content)
    else:
        response = client.post("/v1/models/fraud/versions", headers=headers, files=files or None,
                               data=form or None)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert len(response.json()["error"]) > 10
    _assert_nothing_registered(client, settings)


def test_declared_oversized_body_is_refused_before_reading(client: TestClient, settings: Settings,
                                                           tokens: dict[str, str]) -> None:
    size = settings.max_artifact_bytes + settings.max_metadata_bytes + 128 * 1024
    response = client.post(
        "/v1/models/fraud/versions",
        headers={**_auth(tokens["trainer"]), "Content-Type": "multipart/form-data; boundary=x"},
        content=b"--x--\r\n" + b"\x00" * (size - 7),
    )
    assert response.status_code == 413
    assert response.json()["code"] == "artifact_too_large"
    _assert_nothing_registered(client, settings)


def test_chunked_oversized_body_is_cut_off_while_streaming(client: TestClient, settings: Settings,
                                                           tokens: dict[str, str]) -> None:
    limit = settings.max_artifact_bytes + settings.max_metadata_bytes

    def body() -> Iterator[bytes]:
        yield b"--x\r\nContent-Disposition: form-data; name=\"artifact\"; filename=\"m.onnx\"\r\n\r\n"
        for _ in range(2 * limit // 65536 + 10):
            yield b"\x00" * 65536

    response = client.post(
        "/v1/models/fraud/versions",
        headers={**_auth(tokens["trainer"]), "Content-Type": "multipart/form-data; boundary=x"},
        content=body(),
    )
    assert response.status_code == 413
    assert response.json()["code"] == "artifact_too_large"
    _assert_nothing_registered(client, settings)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/..%2F..%2Fescape/versions",
        "/v1/models/%2e%2e/versions",
        "/v1/models/..%5C..%5Cescape/versions",
        "/v1/models/%2Ftmp%2Fescape/versions",
        "/v1/models/" + "a" * 300 + "/versions",
        "/v1/models/UPPER/versions",
        "/v1/models/a%00b/versions",
        "/v1/models/a.b/versions",
    ],
)
def test_path_tricks_cannot_write_or_read_outside_the_store(
    client: TestClient, settings: Settings, tokens: dict[str, str], make_onnx: Callable[..., bytes],
    spec_json: Callable[..., str], path: str, tmp_path: Path,
) -> None:
    before = sorted(str(p) for p in tmp_path.parent.rglob("*escape*"))
    response = client.post(path, headers=_auth(tokens["trainer"]),
                           files={"artifact": ("model.onnx", make_onnx(), "application/octet-stream")},
                           data={"metadata": spec_json()})
    assert 400 <= response.status_code < 500, response.text
    _assert_nothing_registered(client, settings)
    assert sorted(str(p) for p in tmp_path.parent.rglob("*escape*")) == before
    assert list((settings.triton_root).iterdir()) == []
    read = client.get(path.removesuffix("/versions") + "/versions/1/artifact")
    assert 400 <= read.status_code < 500


def test_bad_names_get_a_400_that_says_why(client: TestClient, tokens: dict[str, str]) -> None:
    response = client.get("/v1/models/" + "a" * 300)
    assert response.status_code == 400 and response.json()["code"] == "invalid_name"
    assert "1-128 characters" in response.json()["error"]
    assert client.get("/v1/models/fraud/aliases/boss").json()["code"] == "invalid_name"
    assert client.get("/v1/models/fraud/versions/0").status_code == 422
    assert client.get("/v1/models/fraud/versions/abc").status_code == 422
    # Beyond the database's 32-bit version numbers: refused, not a server error (found by the stateful fuzzing).
    for too_big in (2**31, 2**63, 933329498704550662889639994458112):
        assert client.get(f"/v1/models/fraud/versions/{too_big}").status_code == 422
        assert client.get(f"/v1/models/fraud/versions/{too_big}/artifact").status_code == 422
    op = _auth(tokens["operator"])
    moved = client.put("/v1/models/fraud/aliases/champion", headers=op, json={"version": 2**40, "reason": "x"})
    assert moved.status_code == 422, moved.text
    rolled = client.post("/v1/models/fraud/aliases/champion/rollback", headers=op,
                         json={"to_version": 2**40, "reason": "x"})
    assert rolled.status_code == 422, rolled.text


def test_aliases_history_and_rollback_over_http(
    client: TestClient, tokens: dict[str, str], make_onnx: Callable[..., bytes], spec_json: Callable[..., str]
) -> None:
    for seed in range(3):
        assert _upload(client, tokens["trainer"], make_onnx(seed=seed), spec_json()).status_code == 201  # type: ignore[attr-defined]
    op = _auth(tokens["operator"])
    for v in (1, 2):
        response = client.put("/v1/models/fraud/aliases/champion", headers=op, json={"version": v, "reason": f"v{v}"})
        assert response.status_code == 200, response.text
    canary = client.put("/v1/models/fraud/aliases/canary", headers=op,
                        json={"version": 3, "weight": 0.25, "reason": "try"})
    assert canary.json()["weight"] == 0.25 and canary.json()["changed_by"] == "alice"
    assert client.get("/v1/models/fraud/aliases/champion").json()["version"] == 2
    assert client.get("/v1/models/fraud/aliases/champion/version").json()["version"] == 2
    rollback = client.post("/v1/models/fraud/aliases/champion/rollback", headers=op, json={"reason": "p99 up"})
    assert rollback.status_code == 200
    assert (rollback.json()["version"], rollback.json()["previous_version"]) == (1, 2)
    assert rollback.json()["reason"] == "rollback: p99 up"
    removed = client.delete("/v1/models/fraud/aliases/canary", headers=op, params={"reason": "done"})
    assert removed.status_code == 200 and removed.json()["version"] is None
    assert client.get("/v1/models/fraud/aliases/canary").status_code == 404
    history = client.get("/v1/models/fraud/history").json()
    assert [(c["alias"], c["previous_version"], c["version"]) for c in history["data"]] == [
        ("champion", None, 1), ("champion", 1, 2), ("canary", None, 3), ("champion", 2, 1), ("canary", 3, None)
    ]
    assert client.get("/v1/models/fraud/history", params={"alias": "canary"}).json()["count"] == 2
    assert client.get("/v1/models/fraud").json()["aliases"]["champion"]["version"] == 1

    assert client.put("/v1/models/fraud/aliases/champion", headers=op,
                      json={"version": 9, "reason": "r"}).json()["code"] == "version_not_found"
    assert client.put("/v1/models/ghost/aliases/champion", headers=op,
                      json={"version": 1, "reason": "r"}).status_code == 404
    assert client.put("/v1/models/fraud/aliases/canary", headers=op,
                      json={"version": 1, "reason": "r"}).json()["code"] == "invalid_request"
    assert client.put("/v1/models/fraud/aliases/champion", headers=op, json={"version": 1}).status_code == 422
    assert client.post("/v1/models/fraud/aliases/shadow/rollback", headers=op,
                       json={"reason": "r"}).json()["code"] == "alias_not_set"


def test_signature_conflict_is_409(client: TestClient, tokens: dict[str, str], make_onnx: Callable[..., bytes],
                                   spec_json: Callable[..., str]) -> None:
    assert _upload(client, tokens["both"], make_onnx(3), spec_json(n_in=3)).status_code == 201  # type: ignore[attr-defined]
    assert _upload(client, tokens["both"], make_onnx(4), spec_json(n_in=4)).status_code == 201  # type: ignore[attr-defined]
    op = _auth(tokens["both"])
    client.put("/v1/models/fraud/aliases/champion", headers=op, json={"version": 1, "reason": "r"})
    response = client.put("/v1/models/fraud/aliases/shadow", headers=op, json={"version": 2, "reason": "r"})
    assert response.status_code == 409 and response.json()["code"] == "signature_conflict"


def test_unknown_things_are_404(client: TestClient) -> None:
    assert client.get("/v1/models/ghost").json()["code"] == "model_not_found"
    assert client.get("/v1/models/ghost/versions/1/artifact").status_code == 404
