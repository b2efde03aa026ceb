"""Per-partition input positions kept in the service's state: which record comes next, and gaps.

The consumer's committed offset is not a safe record of what the service applied: faust
acknowledges records its agents never saw (a record delivered while flow control is
suspended or for a stale consumer generation is acked as skipped; a record below the
consumer's read offset is dropped and its range acked as a "gap"), and those offsets are
committed like any other. A ``kill -9`` after such a commit comes back past records never
applied.

So the service keeps its own position per input partition, in the same state mapping as
everything else (the stream's table: restored from the same changelog, written in the same
order). A record that changes a dataset's state carries its position in that state's commit
point, the dataset's head (one changelog write: a restore has both or neither); every record
also writes ``pos/<topic>/<partition>`` = the next offset to apply, after its effect (records
that change no dataset: skipped, dead-lettered, specs and registry events). A partition's
position is the highest of the two (:class:`Positions`, ``recorded``). A record is applied only
when it is that next offset; a later offset on a topic whose offsets are contiguous means
records were skipped upstream: the consumer is asked to seek back and the record waits for
its turn. A gap is accepted as real (records deleted by retention, transaction markers) when
the refetch comes back with an offset above the position again, and then counted.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from dataclasses import dataclass
from typing import Any

from drift import metrics

log = logging.getLogger(__name__)

MAX_SKIPPED = 100_000
"""Records skipped while waiting for one refetch after which the gap is accepted as real."""

RESEEK_EVERY = 10_000
"""Records skipped while waiting after which the seek is asked for again (a seek lost to a rebalance)."""


class Admission(enum.Enum):
    """What to do with a record, by its offset and the partition's position."""

    APPLY = "apply"
    """The next record of its partition: handle it, then call :meth:`Positions.applied`."""
    ALREADY_APPLIED = "already_applied"
    """Below the position (redelivered): acknowledge it, do nothing."""
    AWAITING_REFETCH = "awaiting_refetch"
    """Records before it were skipped upstream and are being read again: skip it for now."""


Recorded = Callable[[str, int], "int | None"]
"""The next offset of ``(topic, partition)`` as the state written with the records' effects says (the heads)."""

Refetch = Callable[[str, int, int], Awaitable[None]]
"""Seeks the consumer of ``(topic, partition)`` back to an offset."""

SkipOver = Callable[[str, int, int, int], Awaitable[None]]
"""Tells the consumer that offsets ``first..last`` of ``(topic, partition)`` will never be delivered."""


@dataclass(slots=True)
class _Pending:
    target: int
    """The offset sought back to."""
    gap_at: int
    """The offset whose arrival showed the gap; every record fetched before the seek is above it."""
    skipped: int = 0


class Positions:
    """Next offset to apply per input partition, in a state mapping, and the gaps before it.

    Args:
        store: the service's state mapping (the stream's table).
        refetch: seeks the consumer of a partition back to an offset.
        contiguous: topics whose offsets have no holes (delete policy); on compacted topics
            a record above the position is applied as it comes.
        skip_over: called with each hole accepted (compacted away, or gone when refetched),
            so that the consumer's commits can pass it.
        recorded: the next offset of a partition as saved with the records' effects (the
            datasets' heads); read once per partition, then kept up to date in memory
            (:meth:`forget` after the state was restored again).

    Examples:
        >>> import asyncio
        >>> seeks = []
        >>> async def refetch(topic, partition, offset): seeks.append((topic, partition, offset))
        >>> p = Positions({}, refetch=refetch, contiguous={"t"})
        >>> run = asyncio.run
        >>> run(p.admit("t", 0, 5)).name        # no position yet: the first record read
        'APPLY'
        >>> p.applied("t", 0, 5)
        >>> run(p.admit("t", 0, 5)).name, run(p.admit("t", 0, 7)).name, seeks
        ('ALREADY_APPLIED', 'AWAITING_REFETCH', [('t', 0, 6)])
        >>> run(p.admit("t", 0, 6)).name        # the refetch brings the skipped record
        'APPLY'

    """

    def __init__(self, store: MutableMapping[str, Any], *, refetch: Refetch, contiguous: Collection[str],
                 skip_over: SkipOver | None = None, recorded: Recorded | None = None,
                 max_skipped: int = MAX_SKIPPED, reseek_every: int = RESEEK_EVERY) -> None:
        self._store = store
        self._recorded = recorded
        self._next: dict[tuple[str, int], int] = {}
        self._refetch = refetch
        self._skip_over = skip_over
        self._contiguous = frozenset(contiguous)
        self._max_skipped = max_skipped
        self._reseek_every = reseek_every
        self._pending: dict[tuple[str, int], _Pending] = {}
        self._start: dict[tuple[str, int], int] = {}

    @staticmethod
    def key(topic: str, partition: int) -> str:
        """The state key of a partition's position."""
        return f"pos/{topic}/{partition}"

    def next_offset(self, topic: str, partition: int) -> int | None:
        """The next offset to apply on the partition (None: nothing applied and no start known)."""
        stored = self.stored(topic, partition)
        return stored if stored is not None else self._start.get((topic, partition))

    def stored(self, topic: str, partition: int) -> int | None:
        """The next offset to apply as persisted (None: nothing applied on the partition yet).

        The higher of the partition's ``pos/`` key and what the heads record: a crash between a
        record's head and its ``pos/`` write leaves the head's, which covers the record.
        """
        tp = (topic, partition)
        known = self._next.get(tp)
        if known is None:
            raw = self._store.get(self.key(topic, partition))
            found = [int(raw)] if raw is not None else []
            if self._recorded is not None and (in_heads := self._recorded(topic, partition)) is not None:
                found.append(in_heads)
            if not found:
                return None
            known = self._next[tp] = max(found)
        return known

    def forget(self) -> None:
        """Read the positions from the state again (it was restored from the changelog again)."""
        self._next.clear()

    def start_at(self, topic: str, partition: int, offset: int) -> None:
        """Where the consumer starts a partition that has no position yet (not persisted).

        Without it the first record delivered would be applied whatever came before it; with
        it a record skipped upstream before the first one applied is read again too.
        """
        self._start[(topic, partition)] = offset

    async def admit(self, topic: str, partition: int, offset: int) -> Admission:
        """Whether to apply the record at ``offset`` now; asks for a refetch on a gap before it."""
        at = self.next_offset(topic, partition)
        tp = (topic, partition)
        if at is None or offset == at:
            self._pending.pop(tp, None)
            return Admission.APPLY
        if offset < at:
            metrics.RECORDS.labels(topic, "already_applied").inc()
            return Admission.ALREADY_APPLIED
        if topic not in self._contiguous:
            self._pending.pop(tp, None)
            if self._skip_over is not None:   # compacted: holes are where superseded records were
                await self._skip_over(topic, partition, at, offset - 1)
            return Admission.APPLY
        pending = self._pending.get(tp)
        if pending is None or pending.target != at:
            self._pending[tp] = _Pending(target=at, gap_at=offset)
            log.warning("records skipped before this one; reading them again",
                        extra={"topic": topic, "partition": partition, "offset": offset, "position": at})
            metrics.RECORDS.labels(topic, "refetch").inc()
            await self._refetch(topic, partition, at)
            return Admission.AWAITING_REFETCH
        # Records fetched before the seek come in offset order from above ``gap_at``; one at or
        # below it was fetched again after the seek back to ``at``: the first offset there is.
        if offset <= pending.gap_at or pending.skipped >= self._max_skipped:
            return await self._accept_gap(topic, partition, at, offset)
        pending.skipped += 1
        if pending.skipped % self._reseek_every == 0:
            await self._refetch(topic, partition, at)
        metrics.RECORDS.labels(topic, "refetch").inc()
        return Admission.AWAITING_REFETCH

    async def _accept_gap(self, topic: str, partition: int, at: int, offset: int) -> Admission:
        self._pending.pop((topic, partition), None)
        metrics.INPUT_GAPS.labels(topic).inc()
        log.error("offsets missing from the partition; going on after them",
                  extra={"topic": topic, "partition": partition, "missing_from": at, "missing_to": offset})
        if self._skip_over is not None:
            await self._skip_over(topic, partition, at, offset - 1)
        return Admission.APPLY

    def applied(self, topic: str, partition: int, offset: int) -> None:
        """The record at ``offset`` was handled (applied, skipped by the core or dead-lettered)."""
        self._next[(topic, partition)] = offset + 1
        self._store[self.key(topic, partition)] = offset + 1
