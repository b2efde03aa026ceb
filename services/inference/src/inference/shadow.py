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
from inference.tensors import Tensor, split_rows, stack_rows

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
MaxRows = Callable[[str, int], Awaitable[int]]


def _batch_key(job: MirrorJob) -> tuple[object, ...] | None:
    """What jobs must share to run as one batch (None: this job runs alone)."""
    rows = {t.array.shape[0] if t.array.ndim else -1 for t in job.inputs}
    if len(rows) != 1 or -1 in rows or any(t.datatype == "BYTES" for t in job.inputs):
        return None
    return (job.model, job.version, tuple(job.outputs or ()),
            tuple((t.name, t.datatype, t.array.shape[1:]) for t in job.inputs))


def _rows(job: MirrorJob) -> int:
    return int(job.inputs[0].array.shape[0])


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
        workers: backend calls run at once.
        max_rows: the most rows one call to a version may carry (its maximum batch size, 0: no
            batching); None: every job is its own call.
        batch_jobs: the most jobs one worker takes from the queue at once.
        batch_wait_s: how long a worker with batching waits for more jobs before its call.

    """

    def __init__(self, run: Run, done: Done, *, queue_size: int, workers: int, max_rows: MaxRows | None = None,
                 batch_jobs: int = 32, batch_wait_s: float = 0.002) -> None:
        self._run = run
        self._done = done
        self._max_rows = max_rows
        self._batch_jobs = batch_jobs
        self._batch_wait_s = batch_wait_s
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
            jobs = [await self._queue.get()]
            # Jobs waiting behind it for the same model, version and tensor layout run as one
            # batch: one backend call instead of many, which is what keeps full mirroring cheap.
            # A mirror may wait a moment for company; no caller waits for it.
            if self._max_rows is not None and self._batch_wait_s > 0 and self._queue.qsize() < self._batch_jobs - 1:
                await asyncio.sleep(self._batch_wait_s)
            while len(jobs) < self._batch_jobs and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            metrics.SHADOW_QUEUE.set(self._queue.qsize())
            groups: dict[object, list[MirrorJob]] = {}
            for i, job in enumerate(jobs):
                key = _batch_key(job) if self._max_rows is not None else None
                groups.setdefault(key if key is not None else ("alone", i), []).append(job)
            try:
                for group in groups.values():
                    await self._run_group(group)
            finally:
                for _ in jobs:
                    self._queue.task_done()

    async def _run_group(self, jobs: list[MirrorJob]) -> None:
        first = jobs[0]
        if len(jobs) > 1 and self._max_rows is not None:
            limit = await self._limit(first)
            if limit > 0:
                batch: list[MirrorJob] = []
                for job in jobs:
                    if batch and sum(map(_rows, batch)) + _rows(job) > limit:
                        await self._run_batch(batch)
                        batch = []
                    batch.append(job)
                await self._run_batch(batch)
                return
        for job in jobs:
            await self._run_batch([job])

    async def _limit(self, job: MirrorJob) -> int:
        assert self._max_rows is not None
        try:
            return await self._max_rows(job.model, job.version)
        except Exception:  # unknown batch size: the jobs run one by one
            log.debug("mirror batch size unknown", extra={"model": job.model, "version": job.version}, exc_info=True)
            return 0

    async def _run_batch(self, jobs: list[MirrorJob]) -> None:
        first = jobs[0]
        inputs = stack_rows([j.inputs for j in jobs])
        started = time.perf_counter()
        try:
            outputs = await self._run(first.model, first.version, inputs, first.outputs)
        except InferenceError as exc:
            self._failed(jobs, None, str(exc))
            return
        except Exception:
            self._failed(jobs, "mirror call failed unexpectedly", "")
            return
        latency_ms = (time.perf_counter() - started) * 1000
        parts = [outputs] if len(jobs) == 1 else split_rows(outputs, [_rows(j) for j in jobs])
        if parts is None:
            self._failed(jobs, None, "a batched mirror answered an output without batch rows")
            return
        for job, out in zip(jobs, parts, strict=True):
            metrics.SHADOW_CALLS.labels(job.model, job.kind, "ok").inc()
            diff = divergence(out, job.served)
            if diff is not None:
                metrics.DIVERGENCE.labels(job.model, job.kind).observe(diff)
            try:
                self._done(job, out, latency_ms, diff)
            except Exception:
                log.exception("mirror result not recorded", extra={"model": job.model})
            self.completed += 1

    def _failed(self, jobs: list[MirrorJob], unexpected: str | None, error: str) -> None:
        for job in jobs:
            metrics.SHADOW_CALLS.labels(job.model, job.kind, "error").inc()
        if unexpected is not None:
            log.exception(unexpected, extra={"model": jobs[0].model})
        else:
            log.debug("mirror call failed", extra={"model": jobs[0].model, "version": jobs[0].version,
                                                   "jobs": len(jobs), "error": error})
