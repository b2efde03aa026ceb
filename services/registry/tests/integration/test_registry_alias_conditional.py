"""Conditional alias changes: ``ETag`` on reading an alias, ``If-Match`` on changing it (412 when stale).

Two writers (gateway replicas, an operator) that read an alias and then change it must not
overwrite each other's change made in between: the second write names what it read and is refused.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient
from registry.app import create_app
from registry.settings import Settings


def test_a_stale_if_match_is_refused_and_changes_nothing(settings: Settings, tokens: dict[str, str],
                                                         make_onnx: Callable[..., bytes],
                                                         spec_json: Callable[..., str]) -> None:
    trainer = {"Authorization": f"Bearer {tokens['trainer']}"}
    operator = {"Authorization": f"Bearer {tokens['operator']}"}
    with TestClient(create_app(settings)) as client:
        for seed in (1, 2, 3):
            r = client.post("/v1/models/fraud/versions", headers=trainer, data={"metadata": spec_json()},
                            files={"artifact": ("m.onnx", make_onnx(seed=seed), "application/octet-stream")})
            assert r.status_code == 201, r.text

        def put(alias: str, body: dict[str, object], if_match: str | None) -> int:
            headers = operator | ({"If-Match": if_match} if if_match else {})
            return client.put(f"/v1/models/fraud/aliases/{alias}", json=body, headers=headers).status_code

        # Unset: only "none" (or "*") matches.
        assert put("champion", {"version": 1, "reason": "first"}, '"1"') == 412
        assert put("champion", {"version": 1, "reason": "first"}, '"none"') == 200
        read = client.get("/v1/models/fraud/aliases/champion")
        assert read.headers["etag"] == '"1"'

        # Someone else moves it; a write conditional on the old read is refused and changes nothing.
        assert put("champion", {"version": 2, "reason": "operator"}, None) == 200
        refused = client.put("/v1/models/fraud/aliases/champion", json={"version": 3, "reason": "stale"},
                             headers=operator | {"If-Match": read.headers["etag"]})
        assert refused.status_code == 412
        assert refused.json()["code"] == "alias_changed" and '"2"' in refused.json()["error"]
        assert client.get("/v1/models/fraud/aliases/champion").json()["version"] == 2
        assert put("champion", {"version": 3, "reason": "fresh"}, '"2"') == 200

        # The canary's ETag carries its weight: a weight step made meanwhile is not overwritten.
        assert put("canary", {"version": 2, "weight": 0.25, "reason": "canary"}, None) == 200
        canary = client.get("/v1/models/fraud/aliases/canary").headers["etag"]
        assert canary == '"2;w=0.25"'
        assert put("canary", {"version": 2, "weight": 0.5, "reason": "step"}, canary) == 200
        assert put("canary", {"version": 2, "weight": 1.0, "reason": "stale step"}, canary) == 412
        stale_delete = client.delete("/v1/models/fraud/aliases/canary", params={"reason": "end"},
                                     headers=operator | {"If-Match": canary})
        assert stale_delete.status_code == 412
        ok_delete = client.delete("/v1/models/fraud/aliases/canary", params={"reason": "end"},
                                  headers=operator | {"If-Match": '"2;w=0.5"'})
        assert ok_delete.status_code == 200
        assert put("champion", {"version": 1, "reason": "any"}, "*") == 200
