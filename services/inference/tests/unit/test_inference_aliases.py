"""The registry alias writer over a fake HTTP transport: retries, partial success, superseded changes, bad tokens."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest
from inference.aliases import AliasMove, AliasTarget, RegistryAliases
from inference.errors import RegistryRefused, RegistryUnavailable, RolloutConflict


class FakeRegistry:
    """Answers the registry's alias routes from a dict; can fail the first ``fail`` requests with 503."""

    def __init__(self, aliases: dict[str, dict[str, Any]], *, fail: int = 0, status: int | None = None) -> None:
        self.aliases = aliases
        self.fail = fail
        self.status = status
        self.calls: list[tuple[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((request.method, request.url.path))
        if self.fail:
            self.fail -= 1
            return httpx.Response(503, json={"error": "database unavailable"})
        if self.status is not None:
            return httpx.Response(self.status, json={"error": "the bearer token is unknown or revoked"})
        assert request.headers["authorization"] == "Bearer secret"
        parts = request.url.path.split("/")
        if request.method == "GET":
            return httpx.Response(200, json={"name": "m", "aliases": self.aliases})
        alias = parts[-1]
        if request.method == "DELETE":
            if alias not in self.aliases:
                return httpx.Response(404, json={"error": "not set", "code": "alias_not_set"})
            del self.aliases[alias]
            return httpx.Response(200, json={})
        body = json.loads(request.content)
        self.aliases[alias] = {"version": body["version"], "weight": body.get("weight")}
        return httpx.Response(200, json={})


def _writer(fake: FakeRegistry, retries: int = 2) -> RegistryAliases:
    return RegistryAliases("http://registry", token="secret", retries=retries, backoff_s=0,
                           transport=httpx.MockTransport(fake))


PROMOTE = [AliasMove("champion", AliasTarget(2), AliasTarget(1)),
           AliasMove("canary", AliasTarget(None), AliasTarget(2, 1.0))]


def test_promotion_is_made_in_order_and_a_retry_skips_what_was_made() -> None:
    fake = FakeRegistry({"champion": {"version": 1, "weight": None}, "canary": {"version": 2, "weight": 1.0}})
    asyncio.run(_writer(fake).move("m", PROMOTE, reason="healthy", changed_by="analysis"))
    assert fake.aliases == {"champion": {"version": 2, "weight": None}}
    writes = [c for c in fake.calls if c[0] != "GET"]
    assert writes == [("PUT", "/v1/models/m/aliases/champion"), ("DELETE", "/v1/models/m/aliases/canary")]
    # The same decision again (a retry after a lost answer) changes nothing more.
    fake.calls.clear()
    asyncio.run(_writer(fake).move("m", PROMOTE, reason="healthy", changed_by="analysis"))
    assert [c for c in fake.calls if c[0] != "GET"] == []


def test_transient_failures_are_retried_then_reported_as_unavailable() -> None:
    fake = FakeRegistry({"canary": {"version": 2, "weight": 0.25}}, fail=2)
    step = [AliasMove("canary", AliasTarget(2, 0.5), AliasTarget(2, 0.25))]
    asyncio.run(_writer(fake, retries=2).move("m", step, reason="healthy", changed_by="analysis"))
    assert fake.aliases["canary"] == {"version": 2, "weight": 0.5}
    down = FakeRegistry({"canary": {"version": 2, "weight": 0.25}}, fail=100)
    with pytest.raises(RegistryUnavailable, match=r"after 3 attempts.*kept and retried"):
        asyncio.run(_writer(down, retries=2).move("m", step, reason="healthy", changed_by="analysis"))
    assert len(down.calls) == 3


def test_a_change_whose_alias_moved_meanwhile_is_refused_not_forced() -> None:
    fake = FakeRegistry({"champion": {"version": 1, "weight": None}, "canary": {"version": 3, "weight": 0.05}})
    rollback = [AliasMove("canary", AliasTarget(None), AliasTarget(2, 0.5))]
    moved = re.escape("canary of 'm' is now v3 at weight 0.05, not v2 at weight 0.5")
    with pytest.raises(RolloutConflict, match=moved):
        asyncio.run(_writer(fake).move("m", rollback, reason="bad", changed_by="analysis"))
    assert fake.aliases["canary"] == {"version": 3, "weight": 0.05}


def test_a_refused_token_says_which_setting_to_fix() -> None:
    fake = FakeRegistry({}, status=401)
    with pytest.raises(RegistryRefused, match="INFERENCE_REGISTRY_TOKEN"):
        asyncio.run(_writer(fake).move("m", [AliasMove("champion", AliasTarget(2))], reason="x", changed_by="op"))
    assert len(fake.calls) == 1  # a refusal is not retried
