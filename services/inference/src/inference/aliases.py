"""Who changes aliases: the model registry, the only writer, or (without a registry) the gateway itself.

The registry keeps the alias records (champion, canary with its weight, shadow) that training
gates, the audit log and every other service read. When the gateway is configured with a
registry (``registry_url`` and ``registry_token``), every alias change it wants, the canary
analysis' steps, promotions and rollbacks, and the operator API's changes, is made through the
registry's REST API (``PUT``/``DELETE /v1/models/{name}/aliases/{alias}``). The gateway never
writes its routing table for them: the registry publishes ``registry.rollout-changed.v1`` and
every replica applies it from the rollout topic, like any other change. So what serves and what
the registry says serves cannot disagree.

Without a registry (a standalone gateway: development, benchmarks), :class:`LocalAliases`
writes the shared routing table in Redis directly and publishes the change to the rollout topic.
With a registry but no token, :class:`ReadOnlyAliases` refuses every change.

A change decided on some state carries that state (:attr:`AliasMove.expect`): before writing, the
registry writer reads the alias and skips a move already made (a retry after a partial success),
and refuses one whose alias moved elsewhere meanwhile (another replica, an operator), so a late
retry never undoes a newer change.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from schemas.registry import Alias

from inference.errors import (
    InvalidInput,
    ModelNotFound,
    RegistryRefused,
    RegistryUnavailable,
    RolloutConflict,
)
from inference.rollout import AliasChange, RolloutState
from inference.routing import ModelRoute

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AliasTarget:
    """Where an alias points: a version (None: nowhere) and, for the canary, its weight."""

    version: int | None
    weight: float | None = None

    def same_as(self, other: AliasTarget) -> bool:
        """Same version, and same weight when both have one (weights compared to 1e-9)."""
        if self.version != other.version:
            return False
        if self.version is None or self.weight is None or other.weight is None:
            return True
        return math.isclose(self.weight, other.weight, abs_tol=1e-9)


@dataclass(frozen=True, slots=True)
class AliasMove:
    """Point ``alias`` at ``target``; ``expect`` is where it pointed when the move was decided (None: any)."""

    alias: Alias
    target: AliasTarget
    expect: AliasTarget | None = None

    def change(self) -> AliasChange:
        """The move as a routing-table change."""
        weight = self.target.weight if self.alias == "canary" and self.target.version is not None else None
        return AliasChange(self.alias, self.target.version, weight)


class AliasMovedMeanwhile(Exception):
    """The registry refused a conditional alias change (412): the alias moved since it was read."""


class AliasWriter(Protocol):
    """Makes alias changes (:class:`RegistryAliases` or :class:`LocalAliases`)."""

    owner: str
    """``registry`` or ``gateway``: who records the change."""

    async def move(self, model: str, moves: Sequence[AliasMove], *, reason: str, changed_by: str,
                   expected_revision: int | None = None) -> None:
        """Make ``moves`` in order.

        Raises:
            RolloutConflict: an alias no longer points where the move expects.
            RegistryUnavailable: the registry did not answer (nothing after the failed move was made).
            RegistryRefused, InvalidInput, ModelNotFound: the change was refused.

        """
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class RegistryAliases:
    """Alias changes through the registry's REST API, with retries on transport and server errors.

    Args:
        base_url: the registry (``http://registry:8082``).
        token: a registry token with the ``operator`` role.
        timeout_s: timeout of one request.
        retries: further attempts after a failed one (transport errors, 5xx, 429).
        backoff_s: pause before the first retry, doubled for each further one.
        transport: an httpx transport (tests).

    """

    owner = "registry"

    def __init__(self, base_url: str, *, token: str, timeout_s: float = 5.0, retries: int = 2,
                 backoff_s: float = 0.2, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s, transport=transport,
                                         headers={"Authorization": f"Bearer {token}"})
        self._retries = retries
        self._backoff_s = backoff_s

    async def move(self, model: str, moves: Sequence[AliasMove], *, reason: str, changed_by: str,
                   expected_revision: int | None = None) -> None:
        """Make ``moves`` through the registry, in order; moves already made are skipped.

        ``changed_by`` goes into the recorded reason (the registry records the token's holder
        as the author); ``expected_revision`` belongs to the gateway's table and is not used.
        """
        text = reason if changed_by in reason else f"{reason} [{changed_by}]"
        for m in moves:
            m.change().checked()
            now, etag = await self.alias(model, m.alias)
            if now.same_as(m.target):
                continue
            if m.expect is not None and not now.same_as(m.expect):
                raise RolloutConflict(
                    f"the registry's {m.alias} of {model!r} is now {_show(now)}, not {_show(m.expect)} as when the "
                    "change was decided; the change is dropped, a new decision will follow")
            path = f"/v1/models/{model}/aliases/{m.alias}"
            # Conditional on what was just read: a change made in between (another replica, an
            # operator) makes the registry answer 412 instead of being overwritten.
            headers = {"If-Match": etag}
            try:
                if m.target.version is None:
                    await self._call("DELETE", path, params={"reason": text}, headers=headers, absent_ok=True)
                else:
                    body: dict[str, Any] = {"version": m.target.version, "reason": text}
                    if m.alias == "canary":
                        body["weight"] = m.target.weight
                    await self._call("PUT", path, json=body, headers=headers)
            except AliasMovedMeanwhile:
                again, _ = await self.alias(model, m.alias)
                if not again.same_as(m.target):   # not our own earlier attempt, whose answer was lost
                    raise RolloutConflict(
                        f"the registry's {m.alias} of {model!r} changed to {_show(again)} while this change was "
                        "being made; the change is dropped, a new decision will follow") from None

    async def alias(self, model: str, alias: Alias) -> tuple[AliasTarget, str]:
        """Where ``alias`` of ``model`` points in the registry, and its ETag (for ``If-Match``)."""
        response = await self._request("GET", f"/v1/models/{model}/aliases/{alias}")
        if response.status_code == 404 and _error(response)[1] == "alias_not_set":
            return AliasTarget(None), '"none"'
        if response.status_code >= 300:
            _raise("GET", f"/v1/models/{model}/aliases/{alias}", response.status_code, _error(response)[0])
        state = response.json()
        return AliasTarget(int(state["version"]), state.get("weight")), response.headers.get("etag", "*")

    async def _call(self, method: str, path: str, *, absent_ok: bool = False, **kwargs: Any) -> Any:
        response = await self._request(method, path, **kwargs)
        if response.status_code < 300:
            return response.json() if response.content else None
        error = _error(response)
        if absent_ok and response.status_code == 404 and error[1] == "alias_not_set":
            return None
        if response.status_code == 412:
            raise AliasMovedMeanwhile(error[0])
        _raise(method, path, response.status_code, error[0])

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The registry's answer (below 500 and not 429), after retries with backoff."""
        last = ""
        for attempt in range(self._retries + 1):
            if attempt:
                await asyncio.sleep(self._backoff_s * 2 ** (attempt - 1))
            try:
                response = await self._client.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            if response.status_code >= 500 or response.status_code == 429:
                last = f"HTTP {response.status_code}: {response.text[:300]}"
                continue
            return response
        raise RegistryUnavailable(f"the registry at {self.base_url} did not answer {method} {path} after "
                                  f"{self._retries + 1} attempts ({last}); the change is kept and retried")

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


class LocalAliases:
    """A standalone gateway's alias changes: straight into the shared routing table (no registry)."""

    owner = "gateway"

    def __init__(self, rollout: RolloutState, *, origin: str) -> None:
        self._rollout = rollout
        self._origin = origin

    async def move(self, model: str, moves: Sequence[AliasMove], *, reason: str, changed_by: str,
                   expected_revision: int | None = None) -> None:
        """Apply ``moves`` atomically to the routing table, compare-and-set on ``expected_revision``."""
        await self._rollout.change(model, [m.change() for m in moves], changed_by=changed_by, reason=reason,
                                   origin=self._origin, expected_revision=expected_revision)

    async def close(self) -> None:
        """Nothing to release."""


class ReadOnlyAliases:
    """A gateway with a registry but no registry token: it may not change aliases at all.

    Writing the routing table itself would make it a second writer next to the registry, so every
    change is refused with what to do instead.
    """

    owner = "registry"

    def __init__(self, registry_url: str) -> None:
        self._registry_url = registry_url

    async def move(self, model: str, moves: Sequence[AliasMove], *, reason: str, changed_by: str,
                   expected_revision: int | None = None) -> None:
        """Refuse.

        Raises:
            RegistryRefused: always.

        """
        raise RegistryRefused(f"aliases of {model!r} belong to the registry at {self._registry_url}: change them "
                              "there (PUT /v1/models/{name}/aliases/{alias}), or give this gateway "
                              "INFERENCE_REGISTRY_TOKEN (operator role) to change them through it")

    async def close(self) -> None:
        """Nothing to release."""


def target_of(route: ModelRoute, alias: Alias) -> AliasTarget:
    """Where ``alias`` points in a routing-table entry."""
    version: int | None = getattr(route, alias)
    if alias == "canary" and version is not None:
        return AliasTarget(version, route.canary_weight)
    return AliasTarget(version)


def _show(t: AliasTarget) -> str:
    if t.version is None:
        return "unset"
    return f"v{t.version}" + ("" if t.weight is None else f" at weight {t.weight:g}")


def _error(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300], ""
    if isinstance(body, dict):
        return str(body.get("error") or body.get("detail") or body)[:500], str(body.get("code", ""))
    return str(body)[:500], ""


def _raise(method: str, path: str, status: int, error: str) -> None:
    what = f"the registry refused {method} {path} ({status}): {error}"
    if status in (401, 403):
        raise RegistryRefused(f"{what}; give the gateway a registry token with the 'operator' role "
                              "(INFERENCE_REGISTRY_TOKEN)")
    if status == 404:
        raise ModelNotFound(what)
    if status == 409:
        raise RolloutConflict(what)
    if status in (400, 422):
        raise InvalidInput(what)
    raise RegistryRefused(what)
