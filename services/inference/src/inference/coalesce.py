"""Coalescing concurrent backend calls for one model version into one call ("natural batching").

While ``calls`` calls for a *lane* are in flight (one by default), further requests for the same
lane wait, and go together in the lane's next call as soon as one of those ends, up to the
version's maximum batch size in rows; nothing waits for a batch to fill, so a lone request goes
out at once. Versions Triton batches itself (``dynamic_batching``) are left to it unless
``dynamic`` is set: measured, coalescing them was slower, as each coalesced call waits out
Triton's queue delay alone. A lane is one model, version and output selection with
the same input names, datatypes and per-row shapes, so the requests' rows can be stacked; a version
that does not batch (``max_batch_size`` 0, unknown yet) and BYTES inputs are never coalesced.

Each call's answer is split back by row counts. A failed call fails every request it carried,
each with its own copy of the error. Every request keeps its own deadline: one that passes while
waiting for its lane is answered :class:`~inference.errors.BackendTimeout` at once, and its rows
are left out of calls not yet made.

Why: the gateway's cost is per call (a gRPC client call to Triton is about half of its CPU per
request), so one call for many requests lets Triton's own dynamic batching form larger batches
than the gateway could otherwise pass it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np  # noqa: F401  (the doctests build their tensors with it)

from inference import metrics
from inference.backend import Backend
from inference.errors import BackendFailed, BackendTimeout, InferenceError
from inference.tensors import Signature, Tensor, split_rows, stack_rows

LaneKey = tuple[str, int, tuple[str, ...] | None, tuple[tuple[str, str, tuple[int, ...]], ...]]


def lane_of(model: str, version: int, inputs: list[Tensor], outputs: list[str] | None) -> LaneKey | None:
    """The lane of a call, or None when it cannot be stacked with others (BYTES, a scalar input).

    >>> x = Tensor("x", "FP32", np.zeros((3, 4), np.float32))
    >>> lane_of("m", 1, [x], None) == lane_of("m", 1, [Tensor("x", "FP32", np.ones((1, 4), np.float32))], None)
    True
    >>> lane_of("m", 1, [x], ["y"]) == lane_of("m", 1, [x], None)
    False
    >>> lane_of("m", 1, [Tensor("s", "BYTES", np.array([b"a"], dtype=object))], None) is None
    True
    """
    parts = []
    for t in inputs:
        if t.datatype == "BYTES" or t.array.ndim == 0:
            return None
        parts.append((t.name, t.datatype, tuple(int(d) for d in t.array.shape[1:])))
    return model, version, tuple(outputs) if outputs else None, tuple(parts)


def split(outputs: list[Tensor], rows: list[int], *, where: str) -> list[list[Tensor]]:
    """Cut a call's outputs back into each request's rows (``rows`` in the order of :func:`stack_rows`).

    Raises:
        BackendFailed: an output does not have one row per input row.

    >>> out = [Tensor("y", "FP32", np.arange(3, dtype=np.float32).reshape(3, 1))]
    >>> [[t.array.tolist() for t in p] for p in split(out, [1, 2], where="m v1")]
    [[[[0.0]]], [[[1.0], [2.0]]]]
    """
    parts = split_rows(outputs, rows)
    if parts is None:
        total = sum(rows)
        t = next(t for t in outputs if t.array.ndim == 0 or t.array.shape[0] != total)
        raise BackendFailed(f"{where} answered a batch of {total} rows with output {t.name!r} of shape "
                            f"{list(t.array.shape)}; it cannot be split by request")
    return parts


@dataclass(slots=True)
class _Waiter:
    inputs: list[Tensor]
    rows: int
    deadline: float
    request_id: str
    future: asyncio.Future[list[Tensor]]


@dataclass(slots=True)
class _Lane:
    waiting: deque[_Waiter] = field(default_factory=deque)
    inflight: int = 0


class Coalescer:
    """A backend that coalesces concurrent calls per lane (see the module docstring).

    Args:
        runner: the backend that makes the calls (Triton).
        calls: calls in flight per lane before requests wait for the next one.
        dynamic: also coalesce versions that Triton batches itself.

    Everything but :meth:`infer` is passed through; :meth:`signature` also learns each version's
    maximum batch size (the core asks for a version's signature before it calls it).
    """

    def __init__(self, runner: Backend, *, calls: int = 1, dynamic: bool = False) -> None:
        self.runner = runner
        self.name = runner.name
        self.calls = calls
        self.dynamic = dynamic
        self._max_rows: dict[tuple[str, int], int] = {}
        self._lanes: dict[LaneKey, _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._histograms: dict[str, Any] = {}

    async def signature(self, model: str, version: int) -> Signature:
        """The runner's signature of one version (whether and how far it is coalesced is remembered)."""
        found = await self.runner.signature(model, version)
        coalesced = not found.dynamic_batching or self.dynamic
        self._max_rows[(model, version)] = found.max_batch_size if coalesced else 0
        return found

    async def ready(self) -> bool:
        """Whether the runner serves."""
        return await self.runner.ready()

    async def model_ready(self, model: str, version: int) -> bool:
        """Whether one version is ready on the runner."""
        return await self.runner.model_ready(model, version)

    async def close(self) -> None:
        """Wait for calls in flight (their waiters are answered), then close the runner."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.runner.close()

    async def infer(self, model: str, version: int, inputs: list[Tensor], outputs: list[str] | None, *,
                    timeout_s: float, request_id: str = "") -> list[Tensor]:
        """Run ``inputs`` on the version, alone or together with concurrent requests of its lane.

        Raises:
            BackendTimeout: the deadline passed (waiting for the lane or in the call).
            and whatever the runner raises for the call that carried these rows.

        """
        max_rows = self._max_rows.get((model, version), 0)
        key = lane_of(model, version, inputs, outputs) if max_rows > 0 else None
        if key is None:
            return await self.runner.infer(model, version, inputs, outputs, timeout_s=timeout_s,
                                           request_id=request_id)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        if lane.inflight < self.calls:
            # A free call slot for the lane: go at once, alone, and start the next call after.
            lane.inflight += 1
            try:
                result = await self.runner.infer(model, version, inputs, outputs, timeout_s=timeout_s,
                                                 request_id=request_id)
            finally:
                self._release(key, lane, max_rows)
            self._observe(model, 1)
            return result
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Tensor]] = loop.create_future()
        lane.waiting.append(_Waiter(inputs, int(inputs[0].array.shape[0]) if inputs else 1, loop.time() + timeout_s,
                                    request_id, future))
        # At the deadline the waiter is answered at once; a call not made yet leaves its rows out.
        # (A caller that is cancelled cancels the future: same effect.)
        timer = loop.call_later(timeout_s, _expire, future, f"{model} v{version}")
        try:
            return await future
        finally:
            timer.cancel()

    def _release(self, key: LaneKey, lane: _Lane, max_rows: int) -> None:
        """A call of the lane ended: start the next ones with what waits, or forget an idle lane."""
        lane.inflight -= 1
        while lane.inflight < self.calls:
            batch = self._take(lane, max_rows)
            if not batch:
                break
            lane.inflight += 1
            task = asyncio.get_running_loop().create_task(self._run(key, lane, max_rows, batch),
                                                          name=f"inference-coalesce-{key[0]}-v{key[1]}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if lane.inflight == 0 and not lane.waiting and self._lanes.get(key) is lane:
            del self._lanes[key]

    async def _run(self, key: LaneKey, lane: _Lane, max_rows: int, batch: list[_Waiter]) -> None:
        try:
            await self._call(key, batch)
        except asyncio.CancelledError:  # the gateway is stopping: nobody may wait for an answer never coming
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(BackendFailed("the gateway stopped before Triton answered"))
            raise
        finally:
            self._release(key, lane, max_rows)

    def _take(self, lane: _Lane, max_rows: int) -> list[_Waiter]:
        batch: list[_Waiter] = []
        rows = 0
        while lane.waiting:
            w = lane.waiting[0]
            if w.future.done():  # its deadline passed, or its caller left
                lane.waiting.popleft()
                continue
            if batch and rows + w.rows > max_rows:
                break
            batch.append(lane.waiting.popleft())
            rows += w.rows
        return batch

    async def _call(self, key: LaneKey, batch: list[_Waiter]) -> None:
        model, version, outputs, _ = key
        # The call may run as long as its most patient request; each waiter enforces its own.
        timeout_s = max(w.deadline for w in batch) - asyncio.get_running_loop().time()
        try:
            if timeout_s <= 0:
                raise BackendTimeout(f"Triton did not answer for {model} v{version} in time; retry later")
            answer = await self.runner.infer(model, version, stack_rows([w.inputs for w in batch]),
                                             list(outputs) if outputs else None, timeout_s=timeout_s,
                                             request_id=batch[0].request_id)
            parts = split(answer, [w.rows for w in batch], where=f"{model} v{version}")
        except InferenceError as exc:
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(_copy(exc))
            return
        except Exception as exc:  # a bug or an unexpected client error: never leave a waiter hanging
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(BackendFailed(f"Triton call for {model} v{version} failed: {exc!r}"))
            return
        for w, part in zip(batch, parts, strict=True):
            if not w.future.done():
                w.future.set_result(part)
        self._observe(model, len(batch))

    def _observe(self, model: str, requests: int) -> None:
        histogram = self._histograms.get(model)
        if histogram is None:
            histogram = self._histograms[model] = metrics.COALESCED.labels(model)
        histogram.observe(requests)


def _expire(future: asyncio.Future[list[Tensor]], where: str) -> None:
    if not future.done():
        future.set_exception(BackendTimeout(f"Triton did not answer for {where} in time; retry later"))


def _copy(exc: InferenceError) -> InferenceError:
    """The same error for another waiter (one instance raised in many tasks would share a traceback)."""
    with contextlib.suppress(Exception):
        return type(exc)(*exc.args)
    return exc
