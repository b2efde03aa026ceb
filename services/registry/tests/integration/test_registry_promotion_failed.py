"""A version Triton refuses to load: the alias is moved back, the version is marked failed, and
the versions that served before keep serving (reliability plan G2, the registry's part). A version
new to a serving model is test-loaded alone first (``_preflight-<model>``), so a refused one never
reloads the serving model.

Triton here is the loopback fake of ``conftest.py`` answering as the real one does (found with a
real tritonserver, see ``tests/reliability/test_reliability_canary_load.py``): the load answers
400 ``load failed for model 'm': version 2 is at UNAVAILABLE state: <reason>``, and its
repository index lists the refused version ``UNAVAILABLE`` with that reason while the versions it
served before stay ``READY``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from registry.app import create_app
from registry.settings import Settings
from schemas.envelope import Envelope
from schemas.registry import RolloutChangedV1

from services.registry.tests.conftest import FakeTritonControl

pytestmark = pytest.mark.integration

Consume = Callable[[str, int], list[tuple[str, bytes]]]
REASON = "Internal: InvalidProtobuf: [ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Protobuf parsing failed."


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _refuse(fake: FakeTritonControl, version: int, *, ready: list[int], model: str = "fraud") -> None:
    """Triton refusing ``version`` when loaded as ``model`` (the serving model or its test load)."""
    fake.status = 400
    fake.error = f"load failed for model '{model}': version {version} is at UNAVAILABLE state: {REASON};"
    fake.index = [*({"name": "fraud", "version": str(v), "state": "READY"} for v in ready),
                  {"name": model, "version": str(version), "state": "UNAVAILABLE", "reason": REASON},
                  {"name": "other", "version": "1", "state": "READY"}]


def _metric(text: str, name: str, labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and labels in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_version_triton_refuses_is_marked_failed_and_its_alias_moved_back(
    settings: Settings, tokens: dict[str, str], fake_triton: FakeTritonControl, make_onnx: Callable[..., bytes],
    spec_json: Callable[..., str], consume: Consume,
) -> None:
    settings = settings.model_copy(update={"triton_url": fake_triton.url})
    op = _auth(tokens["both"])
    with TestClient(create_app(settings)) as client:
        for seed in range(3):
            response = client.post("/v1/models/fraud/versions", headers=op,
                                   files={"artifact": ("m.onnx", make_onnx(seed=seed), "application/octet-stream")},
                                   data={"metadata": spec_json()})
            assert response.status_code == 201, response.text
        assert client.get("/v1/models/fraud/versions/1").json()["serving"] is None  # never loaded yet
        assert client.put("/v1/models/fraud/aliases/champion", headers=op,
                          json={"version": 1, "reason": "first"}).status_code == 200
        v1 = client.get("/v1/models/fraud/versions/1").json()["serving"]
        assert v1["state"] == "loaded" and v1["alias"] == "champion" and v1["reason"] == "", v1
        before = _metric(client.get("/metrics").text, "registry_promotions_failed_total", 'alias="canary"')

        # A canary Triton refuses when test-loaded alone: the canary pointed nowhere before, so it is
        # removed, and the serving model is never reloaded.
        _refuse(fake_triton, 2, ready=[1], model="_preflight-fraud")
        calls = len(fake_triton.calls)
        moved = client.put("/v1/models/fraud/aliases/canary", headers=op,
                           json={"version": 2, "weight": 0.1, "reason": "try v2"})
        assert moved.status_code == 409, moved.text
        assert moved.json()["code"] == "promotion_failed"
        assert "version 2" in moved.json()["error"] and "removed" in moved.json()["error"]
        assert REASON in moved.json()["error"]
        # The test load (refused), the index read to learn why, the test model unloaded; the index read
        # before the restore: Triton still serves v1, so it is not reloaded (a reload would disturb it).
        assert fake_triton.paths[calls:] == ["/v2/repository/models/_preflight-fraud/load", "/v2/repository/index",
                                             "/v2/repository/models/_preflight-fraud/unload", "/v2/repository/index"]
        assert not (settings.triton_root / "_preflight-fraud").exists()
        assert client.get("/v1/models/fraud/aliases/canary").json()["code"] == "alias_not_set"
        failed = client.get("/v1/models/fraud/versions/2").json()["serving"]
        assert failed["state"] == "failed" and failed["alias"] == "canary" and failed["reason"] == REASON, failed
        assert client.get("/v1/models/fraud/versions/1").json()["serving"]["state"] == "loaded"
        config = (settings.triton_root / "fraud" / "config.pbtxt").read_text()
        assert "versions: [1]" in config, config
        history = client.get("/v1/models/fraud/history", params={"alias": "canary"}).json()["data"]
        assert [(h["version"], h["changed_by"]) for h in history] == [(2, "admin"), (None, "registry")]
        assert history[-1]["reason"].startswith("reverted: Triton refused to load version 2: ")
        after = _metric(client.get("/metrics").text, "registry_promotions_failed_total", 'alias="canary"')
        assert after - before == 1

        # A champion move refused by the serving model's own load (the test load gave no verdict: its
        # index does not list it) goes back to the previous champion, with Triton restored by a load
        # because its index no longer shows the champion ready.
        _refuse(fake_triton, 3, ready=[])
        calls = len(fake_triton.calls)
        moved = client.put("/v1/models/fraud/aliases/champion", headers=op, json={"version": 3, "reason": "go"})
        assert moved.status_code == 409 and "moved back to version 1" in moved.json()["error"], moved.text
        assert client.get("/v1/models/fraud/aliases/champion").json()["version"] == 1
        assert fake_triton.paths[calls:] == [
            "/v2/repository/models/_preflight-fraud/load", "/v2/repository/index",
            "/v2/repository/models/_preflight-fraud/unload",
            "/v2/repository/models/fraud/load", "/v2/repository/index",
            "/v2/repository/index", "/v2/repository/models/fraud/load"]
        assert client.get("/v1/models/fraud/versions/3").json()["serving"]["state"] == "failed"

        # A version Triton loads: tested alone, then the serving model reloaded with it.
        fake_triton.status, fake_triton.index = 200, []
        calls = len(fake_triton.calls)
        moved = client.put("/v1/models/fraud/aliases/canary", headers=op,
                           json={"version": 3, "weight": 0.2, "reason": "again, repaired"})
        assert moved.status_code == 200, moved.text
        assert fake_triton.paths[calls:] == ["/v2/repository/models/_preflight-fraud/load",
                                             "/v2/repository/models/_preflight-fraud/unload",
                                             "/v2/repository/models/fraud/load"]
        assert client.get("/v1/models/fraud/versions/3").json()["serving"]["state"] == "loaded"
        assert "versions: [1, 3]" in (settings.triton_root / "fraud" / "config.pbtxt").read_text()

    changes = [Envelope[RolloutChangedV1].model_validate_json(v).payload
               for _, v in consume(settings.rollout_changed_topic, 6)]
    assert [(c.alias, c.version, c.changed_by) for c in changes] == [
        ("champion", 1, "admin"), ("canary", 2, "admin"), ("canary", None, "registry"),
        ("champion", 3, "admin"), ("champion", 1, "registry"), ("canary", 3, "admin")]
    assert changes[2].previous_version == 2 and changes[4].previous_version == 3


def test_a_triton_that_cannot_say_which_version_failed_leaves_the_alias_where_it_is(
    settings: Settings, tokens: dict[str, str], fake_triton: FakeTritonControl, make_onnx: Callable[..., bytes],
    spec_json: Callable[..., str],
) -> None:
    settings = settings.model_copy(update={"triton_url": fake_triton.url})
    op = _auth(tokens["both"])
    with TestClient(create_app(settings)) as client:
        client.post("/v1/models/fraud/versions", headers=op,
                    files={"artifact": ("m.onnx", make_onnx(), "application/octet-stream")},
                    data={"metadata": spec_json()})
        fake_triton.status = 503  # no answer about versions: the index lists nothing for the model
        moved = client.put("/v1/models/fraud/aliases/champion", headers=op, json={"version": 1, "reason": "r"})
        assert moved.status_code == 200, moved.text
        assert client.get("/v1/models/fraud/aliases/champion").json()["version"] == 1
        assert client.get("/v1/models/fraud/versions/1").json()["serving"] is None
