"""Coalescing without Triton: lanes, stacking and splitting, error fan-out and deadlines."""

from __future__ import annotations

import asyncio
import doctest
from typing import Any

import numpy as np
import pytest
from inference import coalesce
from inference.coalesce import Coalescer, split
from inference.errors import BackendFailed, BackendTimeout, InvalidInput
from inference.tensors import Signature, Spec, Tensor, stack_rows


def test_doctests() -> None:
    result = doctest.testmod(coalesce)
    assert result.attempted > 0 and result.failed == 0


class _Runner:
    """Answers ``y = 10 * version + row sum`` per row; each call waits for ``gate`` (when set up)."""

    name = "triton"

    def __init__(self, *, max_batch_size: int = 8, dynamic_batching: bool = False) -> None:
        self.max_batch_size = max_batch_size
        self.dynamic_batching = dynamic_batching
        self.calls: list[tuple[int, float, str]] = []
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None
        self.rows_out: int | None = None

    async def infer(self, model: str, version: int, inputs: list[Tensor], outputs: list[str] | None, *,
                    timeout_s: float, request_id: str = "") -> list[Tensor]:
        self.calls.append((inputs[0].array.shape[0], timeout_s, request_id))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        x = inputs[0].array
        y = (x.sum(axis=1, keepdims=True) + 10 * version).astype(np.float32)
        if self.rows_out is not None:
            y = y[: self.rows_out]
        return [Tensor("y", "FP32", y), Tensor("z", "FP32", -y)]

    async def signature(self, model: str, version: int) -> Signature:
        return Signature([Spec("x", "FP32", (-1, 2))], [Spec("y", "FP32", (-1, 1))], self.max_batch_size,
                         dynamic_batching=self.dynamic_batching)

    async def ready(self) -> bool:
        return True

    async def model_ready(self, model: str, version: int) -> bool:
        return True

    async def close(self) -> None:
        pass


def _x(*rows: float, width: int = 2) -> list[Tensor]:
    return [Tensor("x", "FP32", np.array([[r] * width for r in rows], np.float32))]


async def _coalescer(runner: _Runner, calls: int = 1, dynamic: bool = False) -> Coalescer:
    c = Coalescer(runner, calls=calls, dynamic=dynamic)  # type: ignore[arg-type]
    await c.signature("m", 1)
    return c


def test_merge_and_split_keep_each_request_s_rows_in_order() -> None:
    parts = [_x(1.0), _x(2.0, 3.0), _x(4.0)]
    merged = stack_rows(parts)
    assert merged[0].array[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
    out = [Tensor("y", "FP32", merged[0].array[:, :1] * 10)]
    back = split(out, [1, 2, 1], where="m v1")
    assert [p[0].array[:, 0].tolist() for p in back] == [[10.0], [20.0, 30.0], [40.0]]
    with pytest.raises(BackendFailed, match="cannot be split"):
        split([Tensor("y", "FP32", np.zeros((3, 1), np.float32))], [1, 2, 1], where="m v1")


async def test_requests_arriving_during_a_call_go_together_in_the_next_and_are_answered_row_for_row() -> None:
    runner = _Runner()
    runner.gate = asyncio.Event()
    c = await _coalescer(runner)
    first = asyncio.create_task(c.infer("m", 1, _x(0.0), None, timeout_s=5, request_id="r0"))
    await asyncio.sleep(0)
    assert [n for n, _, _ in runner.calls] == [1]  # the first goes at once, alone
    rows = [(1.0,), (2.0, 3.0), (4.0,), (5.0,)]
    rest = [asyncio.create_task(c.infer("m", 1, _x(*r), None, timeout_s=5, request_id=f"r{i + 1}"))
            for i, r in enumerate(rows)]
    await asyncio.sleep(0)
    assert len(runner.calls) == 1  # they wait for the call in flight
    runner.gate.set()
    answers = await asyncio.gather(first, *rest)
    assert [n for n, _, _ in runner.calls] == [1, 5]
    assert answers[0][0].array.tolist() == [[10.0]]
    for r, answer in zip(rows, answers[1:], strict=True):
        assert answer[0].array[:, 0].tolist() == [2 * v + 10 for v in r]
        assert answer[1].array[:, 0].tolist() == [-(2 * v + 10) for v in r]
    assert not c._lanes and not c._tasks


async def test_a_call_carries_at_most_max_batch_size_rows_and_lanes_are_separate() -> None:
    runner = _Runner(max_batch_size=3)
    runner.gate = asyncio.Event()
    c = await _coalescer(runner)
    await c.signature("m", 2)
    tasks = [asyncio.create_task(c.infer("m", 1, _x(float(i)), None, timeout_s=5)) for i in range(8)]
    other = asyncio.create_task(c.infer("m", 2, _x(9.0), None, timeout_s=5))  # another version: its own lane
    wide = asyncio.create_task(c.infer("m", 1, _x(1.0, width=3), None, timeout_s=5))  # another row shape
    only_y = asyncio.create_task(c.infer("m", 1, _x(1.0), ["y"], timeout_s=5))  # another output selection
    await asyncio.sleep(0)
    runner.gate.set()
    answers = await asyncio.gather(*tasks)
    assert [a[0].array[0, 0] for a in answers] == [2.0 * i + 10 for i in range(8)]
    assert (await other)[0].array.tolist() == [[38.0]]
    assert (await wide)[0].array.tolist() == [[13.0]]
    assert (await only_y)[0].array.tolist() == [[12.0]]
    assert max(n for n, _, _ in runner.calls) == 3
    assert sum(n for n, _, _ in runner.calls) == 11


@pytest.mark.parametrize(("runner", "dynamic", "coalesced"), [
    (_Runner(max_batch_size=0), False, False),                       # does not batch
    (_Runner(dynamic_batching=True), False, False),                  # Triton batches it itself
    (_Runner(dynamic_batching=True), True, True),                    # ... unless asked to
])
async def test_which_versions_are_coalesced(runner: _Runner, dynamic: bool, coalesced: bool) -> None:
    runner.gate = asyncio.Event()
    c = await _coalescer(runner, dynamic=dynamic)
    tasks = [asyncio.create_task(c.infer("m", 1, _x(1.0), None, timeout_s=5)) for _ in range(3)]
    unknown = asyncio.create_task(c.infer("other", 1, _x(1.0), None, timeout_s=5))  # signature never asked
    await asyncio.sleep(0)
    assert len(runner.calls) == (2 if coalesced else 4)
    runner.gate.set()
    await asyncio.gather(*tasks, unknown)


async def test_a_failed_call_fails_every_request_it_carried_each_with_its_own_error() -> None:
    runner = _Runner()
    runner.gate = asyncio.Event()
    c = await _coalescer(runner)
    first = asyncio.create_task(c.infer("m", 1, _x(0.0), None, timeout_s=5))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(c.infer("m", 1, _x(float(i)), None, timeout_s=5)) for i in range(3)]
    await asyncio.sleep(0)
    runner.fail = InvalidInput("Triton refused the request")
    runner.gate.set()
    outcomes: list[Any] = await asyncio.gather(first, *rest, return_exceptions=True)
    assert all(isinstance(o, InvalidInput) and "refused" in str(o) for o in outcomes)
    assert len({id(o) for o in outcomes}) == 4
    # An answer that cannot be split fails the requests it carried too, and the lane recovers.
    runner.fail, runner.gate = None, asyncio.Event()
    first = asyncio.create_task(c.infer("m", 1, _x(0.0), None, timeout_s=5))
    await asyncio.sleep(0)
    runner.rows_out = 1
    rest = [asyncio.create_task(c.infer("m", 1, _x(float(i)), None, timeout_s=5)) for i in range(2)]
    await asyncio.sleep(0)
    runner.gate.set()
    outcomes = await asyncio.gather(first, *rest, return_exceptions=True)
    assert not isinstance(outcomes[0], Exception)
    assert all(isinstance(o, BackendFailed) for o in outcomes[1:])
    runner.rows_out = None
    assert (await c.infer("m", 1, _x(2.0), None, timeout_s=5))[0].array.tolist() == [[14.0]]


async def test_a_waiter_whose_deadline_passes_gets_backend_timeout_at_once_and_its_rows_are_not_sent() -> None:
    runner = _Runner()
    runner.gate = asyncio.Event()
    c = await _coalescer(runner)
    stuck = asyncio.create_task(c.infer("m", 1, _x(0.0), None, timeout_s=5))
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    impatient = asyncio.create_task(c.infer("m", 1, _x(1.0), None, timeout_s=0.1))
    patient = asyncio.create_task(c.infer("m", 1, _x(2.0), None, timeout_s=5))
    with pytest.raises(BackendTimeout, match="in time"):
        await impatient
    assert loop.time() - started < 0.5
    runner.gate.set()
    assert (await patient)[0].array.tolist() == [[14.0]]
    await stuck
    assert [n for n, _, _ in runner.calls] == [1, 1]  # the impatient one's row was left out
    assert runner.calls[1][1] <= 5  # the call's deadline is the patient request's


async def test_with_two_calls_per_lane_two_go_at_once_and_the_rest_wait_for_the_first_to_end() -> None:
    runner = _Runner()
    runner.gate = asyncio.Event()
    c = await _coalescer(runner, calls=2)
    tasks = [asyncio.create_task(c.infer("m", 1, _x(float(i)), None, timeout_s=5)) for i in range(6)]
    await asyncio.sleep(0)
    assert [n for n, _, _ in runner.calls] == [1, 1]
    runner.gate.set()
    answers = await asyncio.gather(*tasks)
    assert [a[0].array[0, 0] for a in answers] == [2.0 * i + 10 for i in range(6)]
    assert sum(n for n, _, _ in runner.calls) == 6 and len(runner.calls) <= 4
    assert not c._lanes and not c._tasks
