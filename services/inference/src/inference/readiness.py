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

Ready is not the same as working: a version can be loaded and ready and still fail every call
(a healthy-but-broken backend). So the gate also counts, per gated version, the calls Triton
answered with a failure (:meth:`VersionGate.failed`; an answer resets the count,
:meth:`VersionGate.answered`). After ``failures_to_trip`` failures in a row the version is
*failing*: routing treats it as not ready (canary share to the champion, no mirrors), the
``on_failing`` hook tells the canary analysis (which rolls the canary back with that evidence),
``inference_version_failing`` is 1 while it lasts and ``inference_version_marked_failing_total``
counts it (the ``TributaryCanaryFailing`` alert: the rollback usually ends the mark within a
second, far inside a scrape interval, so the alert reads the counter). While a version is
failing, every background round sends it one synthetic request (``synthetic``: zeros of its
input signature); the first one it answers clears the mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
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
        failures_to_trip: failed calls in a row that make a gated version *failing*.

    """

    def __init__(self, probe: ReadyProbe, *, timeout_s: float = 2.0, failures_to_trip: int = 5) -> None:
        self._probe = probe
        self.timeout_s = timeout_s
        self.failures_to_trip = failures_to_trip
        self._ready: dict[tuple[str, int], bool] = {}
        self._failures: dict[tuple[str, int], int] = {}
        self._failing: dict[tuple[str, int], str] = {}
        self.synthetic: Callable[[str, int], Awaitable[None]] | None = None
        """Sends one synthetic request to a version (raises when it fails); set by the service."""
        self.on_failing: Callable[[str, int, str], None] | None = None
        """Called once when a version becomes failing (the canary analysis' wake-up)."""

    def ready(self, model: str, version: int) -> bool:
        """Whether Triton last reported ``version`` of ``model`` ready and it is not failing (False: never checked)."""
        key = (model, version)
        return self._ready.get(key, False) and not (self._failing and key in self._failing)

    def failing(self, model: str, version: int) -> str | None:
        """Why ``version`` of ``model`` is failing (how many calls failed, the last failure), or None."""
        return self._failing.get((model, version))

    def answered(self, model: str, version: int) -> None:
        """A call to a gated version was answered: its count of failures in a row starts again."""
        if self._failures:
            self._failures.pop((model, version), None)

    def failed(self, model: str, version: int, reason: str) -> bool:
        """A call to a gated version got a failure from Triton; True when this one made it failing."""
        key = (model, version)
        if key in self._failing:
            return False
        n = self._failures[key] = self._failures.get(key, 0) + 1
        if n < self.failures_to_trip:
            return False
        del self._failures[key]
        why = self._failing[key] = f"{n} calls in a row failed (last: {reason})"
        metrics.VERSION_FAILING.labels(model, "canary").set(1)
        metrics.VERSION_MARKED_FAILING.labels(model).inc()
        log.warning("a canary version failed %d calls in a row; routing sends its share to the champion", n,
                    extra={"model": model, "version": version, "error": reason})
        if self.on_failing is not None:
            try:
                self.on_failing(model, version, why)
            except Exception:
                log.exception("the failing-version hook failed", extra={"model": model, "version": version})
        return True

    async def _retry_failing(self) -> None:
        """One synthetic request to each failing version; the first it answers clears the mark."""
        if self.synthetic is None:
            return
        for model, version in list(self._failing):
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self.synthetic(model, version)
            except Exception as exc:  # any failure keeps the mark
                log.debug("failing version still fails its synthetic request",
                          extra={"model": model, "version": version, "error": str(exc)})
                continue
            if self._failing.pop((model, version), None) is not None:
                log.info("a failing version answered its synthetic request; routing to it again",
                         extra={"model": model, "version": version})

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
        for marks in (self._failures, self._failing):
            for key in [k for k in marks if k not in gated]:
                del marks[key]
        await self.check(k for k in gated if k not in self._ready)
        self._publish(table)

    def _publish(self, table: Mapping[str, ModelRoute]) -> None:
        skipped = {(m, a) for m, v, a in self.not_ready(table) if (m, v) not in self._failing}
        for model, route in table.items():
            for alias, version in (("canary", route.canary), ("shadow", route.shadow)):
                gated = version is not None and version != route.champion
                metrics.VERSION_NOT_READY.labels(model, alias).set(1 if gated and (model, alias) in skipped else 0)
                failing = gated and version is not None and (model, version) in self._failing
                metrics.VERSION_FAILING.labels(model, alias).set(1 if failing else 0)

    async def run(self, tables: TableSource, interval_s: float, stop: asyncio.Event) -> None:
        """Re-check every gated version of the current table every ``interval_s`` until ``stop``."""
        while not stop.is_set():
            table = tables.table
            try:
                await self.check(gated_versions(table))
                await self._retry_failing()
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
