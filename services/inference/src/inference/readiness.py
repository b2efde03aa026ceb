"""Which canary and shadow versions Triton reports ready: the gate in front of canary routing.

A canary (or shadow) version gets traffic only once Triton says it is ready
(``/v2/models/{m}/versions/{v}/ready``). Until then, and whenever Triton says it is not (a load
Triton refused, a version not loaded yet, one it unloaded), the canary's share goes to the
champion and shadow mirrors are skipped, each counted in ``inference_canary_skipped_total``.
Champions are not gated: they have nowhere else to go (the fallback or a 503 answers as before),
and pinned requests keep naming their version.

Requests never wait for Triton here: :meth:`VersionGate.ready` is a dictionary lookup. The states
are refreshed in the background every ``interval_s``, and the versions a new rollout table
names for the first time are checked before that table serves (the rollout state calls
:meth:`VersionGate.on_table` first), so a new canary is never routed before its check. A
version never checked counts as not ready. When Triton does not answer at all (unreachable,
frozen), the last known states are kept: that is the breaker's and the fallback's business,
not a verdict on one version.

Model readiness is Triton's public health API: unlike the repository index, Triton's
restricted ``model-repository`` API is not needed (only the registry holds its secret).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Literal, Protocol

from inference import metrics
from inference.routing import ModelRoute

log = logging.getLogger(__name__)

GatedAlias = Literal["canary", "shadow"]


class ReadyProbe(Protocol):
    """What the gate asks (Triton's health API, :class:`inference.triton.TritonBackend`)."""

    async def ready(self) -> bool:
        """Whether the server answers and is ready."""
        ...

    async def model_ready(self, model: str, version: int) -> bool:
        """Whether one version is loaded and ready."""
        ...


def gated_versions(table: Mapping[str, ModelRoute]) -> set[tuple[str, int]]:
    """The ``(model, version)`` pairs routing sends to only when ready: canaries and shadows.

    A version that is also the model's champion is not gated (it serves anyway).

    >>> sorted(gated_versions({"m": ModelRoute("m", champion=1, canary=2, canary_weight=0.1, shadow=3)}))
    [('m', 2), ('m', 3)]
    >>> gated_versions({"m": ModelRoute("m", champion=1, shadow=1)})
    set()
    """
    found: set[tuple[str, int]] = set()
    for model, route in table.items():
        for version in (route.canary, route.shadow):
            if version is not None and version != route.champion:
                found.add((model, version))
    return found


class VersionGate:
    """Readiness of the canary and shadow versions, as Triton last reported it.

    Args:
        probe: Triton's health API.
        timeout_s: longest a round of checks may take (a frozen Triton keeps the last states).

    """

    def __init__(self, probe: ReadyProbe, *, timeout_s: float = 2.0) -> None:
        self._probe = probe
        self.timeout_s = timeout_s
        self._ready: dict[tuple[str, int], bool] = {}

    def ready(self, model: str, version: int) -> bool:
        """Whether Triton last reported ``version`` of ``model`` ready (False when never checked)."""
        return self._ready.get((model, version), False)

    def not_ready(self, table: Mapping[str, ModelRoute]) -> list[tuple[str, int, GatedAlias]]:
        """The canary and shadow versions of ``table`` that routing skips now, with their alias."""
        skipped: list[tuple[str, int, GatedAlias]] = []
        for model, route in sorted(table.items()):
            for alias, version in (("canary", route.canary), ("shadow", route.shadow)):
                if version is not None and version != route.champion and not self.ready(model, version):
                    skipped.append((model, version, alias))  # type: ignore[arg-type]
        return skipped

    async def check(self, pairs: Iterable[tuple[str, int]]) -> None:
        """Ask Triton about each of ``pairs`` and record the answers (bounded by ``timeout_s``).

        A version Triton calls not ready is recorded as such only when the server itself answers
        ready: otherwise Triton gave no verdict and the previous state stays.
        """
        wanted = sorted(set(pairs))
        if not wanted:
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                answers = await asyncio.gather(*(self._probe.model_ready(m, v) for m, v in wanted))
                server_up = all(answers) or await self._probe.ready()
        except TimeoutError:
            log.warning("Triton did not answer the version readiness checks in time; keeping the last states",
                        extra={"versions": [f"{m} v{v}" for m, v in wanted]})
            return
        if not server_up:
            return
        for (model, version), up in zip(wanted, answers, strict=True):
            before = self._ready.get((model, version))
            if before != up:
                log.log(logging.INFO if up else logging.WARNING,
                        "Triton reports a canary or shadow version %s", "ready" if up else "not ready",
                        extra={"model": model, "version": version})
            self._ready[(model, version)] = up

    async def on_table(self, table: Mapping[str, ModelRoute]) -> None:
        """Check the versions ``table`` gates that were never checked, before it serves; forget the rest."""
        gated = gated_versions(table)
        for key in [k for k in self._ready if k not in gated]:
            del self._ready[key]
        await self.check(k for k in gated if k not in self._ready)
        self._publish(table)

    def _publish(self, table: Mapping[str, ModelRoute]) -> None:
        skipped = {(m, a) for m, _, a in self.not_ready(table)}
        for model, route in table.items():
            for alias, version in (("canary", route.canary), ("shadow", route.shadow)):
                gated = version is not None and version != route.champion
                metrics.VERSION_NOT_READY.labels(model, alias).set(1 if gated and (model, alias) in skipped else 0)

    async def run(self, tables: TableSource, interval_s: float, stop: asyncio.Event) -> None:
        """Re-check every gated version of the current table every ``interval_s`` until ``stop``."""
        while not stop.is_set():
            table = tables.table
            try:
                await self.check(gated_versions(table))
                self._publish(table)
            except Exception:
                log.exception("version readiness check failed; keeping the last states")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)


class TableSource(Protocol):
    """Where the current rollout table is read (:class:`inference.rollout.RolloutState`)."""

    @property
    def table(self) -> dict[str, ModelRoute]:
        """The in-memory rollout table."""
        ...
