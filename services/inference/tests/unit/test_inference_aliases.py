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


def _etag(state: dict[str, Any] | None) -> str:
    if state is None:
        return '"none"'
    return f'"{state["version"]};w={state["weight"]!r}"' if state.get("weight") is not None else f'"{state["version"]}"'


class FakeRegistry:
    """Answers the registry's alias routes from a dict, with ETags and If-Match as the registry does.

    It can fail the first ``fail`` requests with 503, answer everything with ``status``, run
    ``before_write`` ahead of each change (another writer getting in between), or apply a change
    and then answer 503 (``lose_answer``: the answer lost on the way back).
    """

    def __init__(self, aliases: dict[str, dict[str, Any]], *, fail: int = 0, status: int | None = None) -> None:
        self.aliases = aliases
        self.fail = fail
        self.status = status
        self.before_write: Any = None
        self.lose_answer = 0
        self.calls: list[tuple[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((request.method, request.url.path))
        if self.fail:
            self.fail -= 1
            return httpx.Response(503, json={"error": "database unavailable"})
        if self.status is not None:
            return httpx.Response(self.status, json={"error": "the bearer token is unknown or revoked"})
        assert request.headers["authorization"] == "Bearer secret"
        alias = request.url.path.split("/")[-1]
        if request.method == "GET":
            if alias not in self.aliases:
                return httpx.Response(404, json={"error": "not set", "code": "alias_not_set"})
            return httpx.Response(200, json=self.aliases[alias], headers={"etag": _etag(self.aliases[alias])})
        if self.before_write is not None:
            self.before_write(self.aliases)
            self.before_write = None
        if request.headers.get("if-match") not in (None, _etag(self.aliases.get(alias))):
            return httpx.Response(412, json={"error": "alias moved", "code": "alias_changed"})
        if request.method == "DELETE":
            if alias not in self.aliases:
                return httpx.Response(404, json={"error": "not set", "code": "alias_not_set"})
            del self.aliases[alias]
        else:
            body = json.loads(request.content)
            self.aliases[alias] = {"version": body["version"], "weight": body.get("weight")}
        if self.lose_answer:
            self.lose_answer -= 1
            return httpx.Response(503, json={"error": "proxy timeout"})
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


def test_a_change_made_between_the_read_and_the_write_is_not_overwritten() -> None:
    fake = FakeRegistry({"champion": {"version": 1, "weight": None}, "canary": {"version": 2, "weight": 1.0}})

    def operator_rolls_back_the_canary(aliases: dict[str, dict[str, Any]]) -> None:
        aliases["canary"] = {"version": 3, "weight": 0.05}

    fake.before_write = lambda aliases: None  # the champion move goes through
    writer = _writer(fake)
    asyncio.run(writer.move("m", PROMOTE[:1], reason="healthy", changed_by="analysis"))
    fake.before_write = operator_rolls_back_the_canary
    with pytest.raises(RolloutConflict, match="changed to v3"):
        asyncio.run(writer.move("m", PROMOTE[1:], reason="healthy", changed_by="analysis"))
    assert fake.aliases["canary"] == {"version": 3, "weight": 0.05}


def test_a_change_whose_answer_was_lost_is_not_taken_for_a_conflict() -> None:
    fake = FakeRegistry({"champion": {"version": 1, "weight": None}, "canary": {"version": 2, "weight": 1.0}})
    fake.lose_answer = 1  # the champion move is made, its answer lost; the retry meets its own change
    asyncio.run(_writer(fake).move("m", PROMOTE, reason="healthy", changed_by="analysis"))
    assert fake.aliases == {"champion": {"version": 2, "weight": None}}

