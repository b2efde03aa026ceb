"""Mirroring: requests copied, in the background, to a shadow version or to the champion.

Two kinds of job share one bounded queue and a few workers:

* ``shadow`` — the request as served, run on the rollout's shadow version; its answer is
  compared with the served one and published as a prediction with route ``shadow``;
* ``compare`` — a canary-served request run on the champion, so the canary analysis knows how
  far the canary's answers are from the champion's.

The caller's answer never waits for a mirror: :meth:`ShadowMirror.offer` only puts the job in
the queue, and when the queue is full the job is dropped and counted
(``inference_shadow_dropped_total``), never hidden and never queued without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from inference import metrics
from inference.errors import InferenceError
from inference.tensors import Tensor

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MirrorJob:
    """One mirrored request."""

    kind: Literal["shadow", "compare"]
    model: str
    version: int
    inputs: list[Tensor]
    outputs: list[str] | None
    served: list[Tensor]
    served_version: int
    request_id: str
    entity: str | None = None
    dataset: str | None = None
    features: dict[str, float | int | str | None] | None = None


Run = Callable[[str, int, list[Tensor], list[str] | None], Awaitable[list[Tensor]]]
Done = Callable[[MirrorJob, list[Tensor], float, float | None], None]


def divergence(a: list[Tensor], b: list[Tensor]) -> float | None:
    """Mean absolute difference over the numeric outputs both answers have with the same shape.

    >>> x = Tensor("y", "FP32", np.array([[0.25], [0.5]], dtype=np.float32))
    >>> y = Tensor("y", "FP32", np.array([[0.5], [0.5]], dtype=np.float32))
    >>> divergence([x], [y])
    0.125
    """
    others = {t.name: t for t in b}
    diffs: list[float] = []
    for t in a:
        o = others.get(t.name)
        if o is None or t.datatype == "BYTES" or o.datatype == "BYTES" or t.array.shape != o.array.shape:
            continue
        diffs.append(float(np.mean(np.abs(t.array.astype(np.float64) - o.array.astype(np.float64)))))
    return float(np.mean(diffs)) if diffs else None


class ShadowMirror:
    """A bounded queue of mirror jobs and the workers that run them.

    Args:
        run: runs a version on inputs (the backend, with its own deadline).
        done: told each finished job, its outputs, its latency (ms) and the divergence.
        queue_size: jobs that may wait; more are dropped and counted.
        workers: jobs run at once.

    """

    def __init__(self, run: Run, done: Done, *, queue_size: int, workers: int) -> None:
        self._run = run
        self._done = done
        self._queue: asyncio.Queue[MirrorJob] = asyncio.Queue(maxsize=queue_size)
        self._workers = workers
        self._tasks: list[asyncio.Task[None]] = []
        self.dropped = 0
        self.completed = 0

    def offer(self, job: MirrorJob) -> bool:
        """Queue ``job`` without waiting; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.dropped += 1
            metrics.SHADOW_DROPPED.labels(job.model, job.kind).inc()
            return False
        metrics.SHADOW_QUEUE.set(self._queue.qsize())
        return True

    def start(self) -> None:
        """Start the workers."""
        self._tasks = [asyncio.create_task(self._work(), name=f"inference-mirror-{i}") for i in range(self._workers)]

    async def stop(self) -> None:
        """Stop the workers; queued jobs are abandoned (mirrors are best effort by design)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def idle(self, timeout_s: float) -> bool:
        """Wait until the queue is empty and no job runs (tests); False on timeout."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            metrics.SHADOW_QUEUE.set(self._queue.qsize())
            started = time.perf_counter()
            try:
                outputs = await self._run(job.model, job.version, job.inputs, job.outputs)
            except InferenceError as exc:
                metrics.SHADOW_CALLS.labels(job.model, job.kind, "error").inc()
                log.debug("mirror call failed", extra={"model": job.model, "version": job.version, "error": str(exc)})
                self._queue.task_done()
                continue
            except Exception:
                metrics.SHADOW_CALLS.labels(job.model, job.kind, "error").inc()
                log.exception("mirror call failed unexpectedly", extra={"model": job.model})
                self._queue.task_done()
                continue
            latency_ms = (time.perf_counter() - started) * 1000
            metrics.SHADOW_CALLS.labels(job.model, job.kind, "ok").inc()
            diff = divergence(outputs, job.served)
            if diff is not None:
                metrics.DIVERGENCE.labels(job.model, job.kind).observe(diff)
            try:
                self._done(job, outputs, latency_ms, diff)
            except Exception:
                log.exception("mirror result not recorded", extra={"model": job.model})
            self.completed += 1
            self._queue.task_done()
