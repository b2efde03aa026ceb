"""The adaptive concurrency limit (inference.admission), the core's use of it, and Kafka requests waiting for room."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from inference.admission import AdaptiveLimit
from inference.consumer import RequestHandler
from inference.errors import Overloaded
from inference.service import InferRequest
from opentelemetry import trace
from schemas.envelope import Envelope
from schemas.inference import InferenceRequestedV1, TensorValue

from services.inference.tests.unit.test_inference_units import X, _Backend, _service


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _windows(limit: AdaptiveLimit, seconds: float, count: int = 1) -> list[int]:
    """Feed ``count`` whole windows of answers taking ``seconds`` each; the limit after each."""
    after = []
    for _ in range(count):
        for _ in range(limit.window):
            limit.record(seconds)
        after.append(limit.current)
    return after


def test_steady_answers_keep_the_limit_at_its_maximum() -> None:
    limit = AdaptiveLimit(16, window=10)
    assert limit.current == 16
    assert _windows(limit, 0.001, 5) == [16] * 5
    assert limit.best == pytest.approx(0.001)
    # Slower, but within the tolerance (2x the best): no change.
    assert _windows(limit, 0.0019, 3) == [16] * 3


def test_slow_windows_shrink_the_limit_at_most_by_half_and_fast_ones_grow_it_by_one() -> None:
    limit = AdaptiveLimit(16, window=10, tolerance=2.0)
    _windows(limit, 0.001)
    # Ten times slower: the gradient is clamped at 0.5, so each window halves the limit (plus one).
    assert _windows(limit, 0.010, 4) == [9, 5, 3, 2]
    # It never goes below one (1.x * 0.5 + 1 >= 1).
    assert _windows(limit, 0.010, 5)[-1] >= 1
    # Three times slower than the best: gradient 2/3.
    limit2 = AdaptiveLimit(12, window=10, tolerance=2.0)
    _windows(limit2, 0.001)
    assert _windows(limit2, 0.003) == [9]   # 12 * 2/3 + 1
    # Fast again: one more a window, up to the maximum.
    assert _windows(limit2, 0.001, 4) == [10, 11, 12, 12]


def test_the_best_window_is_forgotten_after_two_epochs() -> None:
    clock = _Clock()
    limit = AdaptiveLimit(8, window=10, epoch_s=30.0, clock=clock)
    _windows(limit, 0.001)
    # The model becomes five times slower for good.
    clock.now = 10
    assert _windows(limit, 0.005, 3) == [5, 3, 2]
    clock.now = 31  # a new epoch: the previous one's best (1 ms) is still the reference
    assert _windows(limit, 0.005) == [2]
    assert limit.best == pytest.approx(0.001)
    clock.now = 62  # the epoch with the fast windows is two epochs back: 5 ms is the usual answer time now
    assert _windows(limit, 0.005, 8) == [3, 4, 5, 6, 7, 8, 8, 8]
    assert limit.best == pytest.approx(0.005)


def test_bad_settings_are_refused() -> None:
    for kwargs in ({"maximum": 0}, {"maximum": 4, "tolerance": 0.5}, {"maximum": 4, "window": 0},
                   {"maximum": 4, "epoch_s": 0}):
        with pytest.raises(ValueError, match="must be"):
            AdaptiveLimit(**kwargs)  # type: ignore[arg-type]


async def test_the_core_sheds_at_the_adaptive_limit_and_says_so() -> None:
    service, _ = _service(_Backend("triton", delay=0.05), max_inflight=8)
    service.admission = AdaptiveLimit(8, window=1)
    service.admission.record(0.001)   # the best window: 1 ms
    service.admission.record(0.1)     # 100x slower: the limit goes 8 -> 5
    assert service.admission.current == 5
    results = await asyncio.gather(*(service.infer(InferRequest(model="m", inputs=X)) for _ in range(8)),
                                   return_exceptions=True)
    refused = [r for r in results if isinstance(r, Overloaded)]
    assert len(refused) == 3, results
    assert "adaptive limit 5 of at most 8" in str(refused[0])
    # The five admitted answers (50 ms each, 50x the best) shrank the limit further.
    assert service.admission.current < 5


def _requests(n: int) -> list[Envelope[InferenceRequestedV1]]:
    row = TensorValue(name="x", datatype="FP32", shape=[1, 4], data=[0.0, 0.0, 0.0, 0.0])
    return [Envelope.wrap(InferenceRequestedV1(request_id=f"r-{i}", model_name="m", entity_id=f"e{i}",
                                               requested_at=datetime.now(UTC), inputs=[row]),
                          event_id=f"ev-{i}", source="test", occurred_at=datetime.now(UTC)) for i in range(n)]


async def test_kafka_requests_beyond_the_limit_wait_for_room_instead_of_being_answered_429() -> None:
    from inference import metrics

    service, _ = _service(_Backend("triton", delay=0.02), max_inflight=2)
    handler = RequestHandler(service, None, response_topic="t", tracer=trace.get_tracer("test"))  # type: ignore[arg-type]
    waits_before = metrics.ASYNC_OVERLOAD_WAITS._value.get()
    answers = await asyncio.gather(*(handler.answer(e) for e in _requests(8)))
    assert [(a.request_id, a.error, a.status) for a, _ in answers] == [(f"r-{i}", None, 200) for i in range(8)]
    assert metrics.ASYNC_OVERLOAD_WAITS._value.get() > waits_before
    for _, delivery in answers:  # each answered request's prediction event was handed to the sink
        assert delivery is not None
        delivery.cancel()

    # Without the wait, the batch's requests beyond the limit are answered 429 at once.
    impatient = RequestHandler(service, None, response_topic="t", tracer=trace.get_tracer("test"),  # type: ignore[arg-type]
                               overload_wait_s=0)
    answers = await asyncio.gather(*(impatient.answer(e) for e in _requests(8)))
    statuses = sorted(a.status for a, _ in answers)
    assert statuses == [200, 200] + [429] * 6, statuses
    assert all("requests in flight" in (a.error or "") for a, _ in answers if a.status == 429)
    for _, delivery in answers:
        if delivery is not None:
            delivery.cancel()
