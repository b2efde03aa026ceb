"""Pure parts of the gateway: routing, tensors, the canary decision, mirroring, the core with fakes."""

from __future__ import annotations

import asyncio
import doctest
import importlib
from collections import Counter
from typing import Any

import httpx
import numpy as np
import pytest
from inference.canary import CanaryStats, LabelJoin, Policy, Window, decide
from inference.contracts import RegistryContracts
from inference.errors import BackendUnavailable, InvalidInput, ModelNotFound, Overloaded, http_status
from inference.routing import ModelRoute, bucket, choose
from inference.service import InferenceService, InferRequest, PredictRequest
from inference.shadow import MirrorJob, ShadowMirror
from inference.tensors import Signature, Spec, Tensor, check_against, from_raw, from_values, to_raw

from services.inference.tests.unit.fakes import FixedRollout


@pytest.mark.parametrize("module", ["inference.routing", "inference.canary", "inference.shadow", "inference.breaker",
                                    "inference.service", "inference.contracts", "inference.infer_asgi",
                                    "inference.ids", "inference.tensors"])
def test_doctests(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("weight", [0.05, 0.25, 0.5, 0.9])
def test_canary_share_over_10000_keys_is_within_two_points(weight: float) -> None:
    route = ModelRoute("credit", champion=1, canary=2, canary_weight=weight)
    share = Counter(choose(route, f"customer-{i}") for i in range(10_000))[(2, "canary")] / 10_000
    assert abs(share - weight) <= 0.02


def test_stickiness_is_monotonic_in_the_weight_and_independent_per_model() -> None:
    keys = [f"k{i}" for i in range(2000)]
    low = {k for k in keys if choose(ModelRoute("m", 1, 2, 0.1), k) == (2, "canary")}
    high = {k for k in keys if choose(ModelRoute("m", 1, 2, 0.5), k) == (2, "canary")}
    assert low < high
    assert [bucket("a", k) for k in keys[:50]] != [bucket("b", k) for k in keys[:50]]


def test_tensor_codecs_round_trip_and_refuse_bad_input() -> None:
    t = from_values("x", "FP32", [2, 2], [[1, 2], [3, 4]])
    assert t.array.dtype == np.float32 and t.shape == [2, 2]
    assert np.array_equal(from_raw("x", "FP32", [2, 2], to_raw(t)).array, t.array)
    s = from_values("s", "BYTES", [2], ["a", "bé"])
    assert list(from_raw("s", "BYTES", [2], to_raw(s)).array) == [b"a", "bé".encode()]
    for args, fragment in [(("x", "INT32", [1], [1.5]), "non-integer"), (("x", "FP32", [2], [1]), "needs 2"),
                           (("x", "FP32", "2", [1, 2]), "list of integers"), (("", "FP32", [1], [1]), "name")]:
        with pytest.raises(InvalidInput, match=fragment):
            from_values(*args)
    with pytest.raises(InvalidInput, match="needs 8 bytes"):
        from_raw("x", "FP32", [2], b"\0" * 7)
    with pytest.raises(InvalidInput, match="truncated"):
        from_raw("s", "BYTES", [1], b"\1\0")
    specs = [Spec("x", "FP32", (-1, 4))]
    check_against([Tensor("x", "FP32", np.zeros((3, 4), np.float32))], specs, model="m", max_batch_size=8)
    with pytest.raises(InvalidInput, match="maximum of 2"):
        check_against([Tensor("x", "FP32", np.zeros((3, 4), np.float32))], specs, model="m", max_batch_size=2)
    with pytest.raises(InvalidInput, match="needs input"):
        check_against([], specs, model="m", max_batch_size=0)


def test_decide_rolls_back_on_each_kind_of_evidence() -> None:
    p = Policy(min_requests=100, min_requests_rollback=20, min_labelled=10, min_compared=10)
    champ = Window(1, requests=1000, errors=1, p99_ms=4.0, labelled=100, correct=90)
    slow = decide(p, weight=0.25, champion=champ, canary=Window(2, requests=100, p99_ms=40.0), divergence=None,
                  compared=0)
    assert slow.action == "rollback" and "p99" in slow.reasons[0]
    inaccurate = decide(p, weight=0.25, champion=champ, canary=Window(2, 100, 0, 4.0, labelled=20, correct=10),
                        divergence=None, compared=0)
    assert inaccurate.action == "rollback" and "accuracy" in inaccurate.reasons[0]
    far = decide(p, weight=0.25, champion=champ, canary=Window(2, 30), divergence=0.5, compared=10)
    assert far.action == "rollback"
    early = decide(p, weight=0.25, champion=champ, canary=Window(2, 30), divergence=0.0, compared=10)
    assert early.action == "hold" and early.waiting
    step = decide(p, weight=0.25, champion=champ, canary=Window(2, 100, 0, 4.1), divergence=0.001, compared=50)
    assert (step.action, step.weight_after) == ("step", 0.5)


def test_label_join_scores_each_prediction_once() -> None:
    from datetime import UTC, datetime

    from schemas.envelope import Envelope
    from schemas.ingest import LabelEventV1

    stats = CanaryStats()
    join = LabelJoin(stats, capacity=2)
    join.remember("a", "m", 1, 0.9)
    join.remember("b", "m", 2, 0.1)
    join.remember("c", "m", 2, 0.8)  # "a" falls out of the window
    labels = [Envelope.wrap(LabelEventV1(event_id=f"l{e}", dataset="d", entity_id=e, event_time=datetime.now(UTC),
                                         label=1), event_id=f"l{e}", source="t", occurred_at=datetime.now(UTC))
              for e in ("a", "b", "c", "c")]
    asyncio.run(join.on_labels(labels))
    assert stats.window("m", 2).labelled == 2 and stats.window("m", 2).correct == 1
    assert stats.window("m", 1).labelled == 0


async def test_mirror_queue_is_bounded_and_never_blocks_the_caller() -> None:
    release = asyncio.Event()
    done: list[Any] = []

    async def slow(model: str, version: int, inputs: list[Tensor], outputs: list[str] | None) -> list[Tensor]:
        await release.wait()
        return inputs

    mirror = ShadowMirror(slow, lambda job, out, ms, diff: done.append(diff), queue_size=3, workers=1)
    mirror.start()
    t = Tensor("y", "FP32", np.zeros((1, 1), np.float32))
    job = MirrorJob("shadow", "m", 2, [t], None, [t], 1, "r")
    accepted = [mirror.offer(job) for _ in range(10)]
    await asyncio.sleep(0)
    assert accepted.count(False) >= 6 and mirror.dropped == accepted.count(False)
    release.set()
    assert await mirror.idle(5)
    assert done and all(d == 0.0 for d in done)
    await mirror.stop()


class _Backend:
    def __init__(self, name: str, *, down: bool = False, delay: float = 0.0) -> None:
        self.name = name
        self.down = down
        self.delay = delay
        self.calls = 0

    async def infer(self, model: str, version: int, inputs: list[Tensor], outputs: list[str] | None, *,
                    timeout_s: float, request_id: str = "") -> list[Tensor]:
        self.calls += 1
        if self.down:
            raise BackendUnavailable("Triton is unreachable")
        await asyncio.sleep(self.delay)
        return [Tensor("y", "FP32", np.full((inputs[0].shape[0], 1), float(version), np.float32))]

    async def signature(self, model: str, version: int) -> Signature:
        if self.down:
            raise BackendUnavailable("Triton is unreachable")
        return Signature([Spec("x", "FP32", (-1, 4))], [Spec("y", "FP32", (-1, 1))], 8)

    async def ready(self) -> bool:
        return not self.down

    async def model_ready(self, model: str, version: int) -> bool:
        return not self.down

    async def close(self) -> None:
        pass


class _Sink:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.delivered: list[tuple[Any, asyncio.Future[None]]] = []

    def offer(self, event: Any) -> bool:
        self.events.append(event)
        return True

    def deliver(self, event: Any) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.delivered.append((event, future))
        return future


def _service(backend: _Backend, fallback: _Backend | None = None, *, max_inflight: int = 10,
             route: ModelRoute | None = None) -> tuple[InferenceService, _Sink]:
    sink = _Sink()
    stats = CanaryStats()
    mirror = ShadowMirror(lambda *a: asyncio.sleep(0, []), lambda *a: None, queue_size=10, workers=1)
    service = InferenceService(rollout=FixedRollout(route or ModelRoute("m", champion=1)),  # type: ignore[arg-type]
                               backend=backend, fallback=fallback, mirror=mirror, predictions=sink, stats=stats,
                               labels=LabelJoin(stats, 10), store=None,  # type: ignore[arg-type]
                               timeout_s=1.0, max_inflight=max_inflight)
    return service, sink


X = [Tensor("x", "FP32", np.zeros((1, 4), np.float32))]


async def test_a_durable_request_hands_its_event_over_with_the_answer_and_offers_nothing() -> None:
    service, sink = _service(_Backend("triton"), route=ModelRoute("m", champion=1, canary=2, canary_weight=0.5))
    result = await service.infer(InferRequest(model="m", inputs=X, entity="c-1", request_id="r-1",
                                              protocol="kafka", durable_event=True))
    assert len(sink.delivered) == 1 and result.event_delivery is sink.delivered[0][1]
    event = sink.delivered[0][0]
    assert (event.request_id, event.model_version, event.route) == ("r-1", result.version, result.route)
    await asyncio.sleep(0)  # the background part ran: it must not offer the event a second time
    assert sink.events == []
    plain = await service.infer(InferRequest(model="m", inputs=X, entity="c-1", request_id="r-2"))
    await asyncio.sleep(0)
    assert plain.event_delivery is None and [e.request_id for e in sink.events] == ["r-2"]
    assert len(sink.delivered) == 1
    for _, future in sink.delivered:
        future.cancel()


async def test_core_routes_publishes_and_falls_back() -> None:
    service, sink = _service(_Backend("triton"))
    result = await service.infer(InferRequest(model="m", inputs=X, entity="c-1"))
    assert (result.version, result.route, result.backend) == (1, "champion", "triton")
    await asyncio.sleep(0)  # the event is queued in the loop turn after the answer
    assert sink.events[0].route == "champion" and sink.events[0].prediction == 1.0
    triton, onnx = _Backend("triton", down=True), _Backend("onnxruntime")
    service, _ = _service(triton, onnx)
    for _ in range(5):
        assert (await service.infer(InferRequest(model="m", inputs=X))).backend == "onnxruntime"
    calls = triton.calls
    assert not service.breaker.closed
    await service.infer(InferRequest(model="m", inputs=X))
    assert triton.calls == calls  # the open breaker skips an unreachable Triton for a while
    service, _ = _service(_Backend("triton", down=True))
    with pytest.raises(BackendUnavailable):
        await service.infer(InferRequest(model="m", inputs=X))


async def test_core_sheds_load_and_refuses_unknown_or_unapproved_versions() -> None:
    service, _ = _service(_Backend("triton", delay=0.05), max_inflight=2)
    results = await asyncio.gather(*(service.infer(InferRequest(model="m", inputs=X)) for _ in range(5)),
                                   return_exceptions=True)
    assert sum(isinstance(r, Overloaded) for r in results) == 3
    assert http_status(Overloaded("x")) == 429
    with pytest.raises(ModelNotFound):
        await service.infer(InferRequest(model="other", inputs=X))
    with pytest.raises(ModelNotFound, match="not in its rollout"):
        await service.infer(InferRequest(model="m", inputs=X, version=7))


async def test_the_v2_front_refuses_at_the_limit_before_reading_the_body() -> None:
    from types import SimpleNamespace

    from inference import metrics
    from inference.infer_asgi import V2InferRoute

    service, _ = _service(_Backend("triton", delay=0.2), max_inflight=1)
    busy = asyncio.create_task(service.infer(InferRequest(model="m", inputs=X)))
    await asyncio.sleep(0.01)  # the one request the limit admits is in flight
    shed_before = metrics.SHED.labels("inflight")._value.get()

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read although the request is refused")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the v2 infer route went to FastAPI")

    state = SimpleNamespace(service=service, settings=SimpleNamespace(retry_after_s=3))
    route = V2InferRoute(app, state)  # type: ignore[arg-type]
    await route({"type": "http", "method": "POST", "path": "/v2/models/m/infer",
                 "headers": [(b"content-length", b"100")]}, receive, send)
    await busy

    start, body = sent
    assert start["status"] == 429 and (b"retry-after", b"3") in start["headers"]
    assert b'"code":"overloaded"' in body["body"] and b"limit 1" in body["body"]
    assert metrics.SHED.labels("inflight")._value.get() == shed_before + 1
    # Below the limit again, the same front serves.
    assert service.shed() is None


async def test_the_grpc_front_refuses_at_the_limit_before_decoding_the_tensors() -> None:
    import grpc
    from inference.grpc_server import InferenceServicer
    from tritonclient.grpc import service_pb2 as pb

    service, _ = _service(_Backend("triton", delay=0.2), max_inflight=1)
    busy = asyncio.create_task(service.infer(InferRequest(model="m", inputs=X)))
    await asyncio.sleep(0.01)
    aborted: list[tuple[Any, str]] = []

    class Context:
        async def abort(self, code: Any, details: str) -> None:
            aborted.append((code, details))
            raise RuntimeError("aborted")

    # Tensors that would be refused as invalid if they were decoded: the limit answers first.
    request = pb.ModelInferRequest(model_name="m", raw_input_contents=[b"x", b"y"])
    with pytest.raises(RuntimeError, match="aborted"):
        await InferenceServicer(service, None).ModelInfer(request, Context())  # type: ignore[arg-type]
    await busy
    assert aborted == [(grpc.StatusCode.RESOURCE_EXHAUSTED, "1 requests in flight (limit 1); retry shortly")]


class _ContractBackend(_Backend):
    """A trainer-built model: `numeric` FP32 and `categorical` INT64 inputs, one `probability` output."""

    def __init__(self) -> None:
        super().__init__("triton")
        self.seen: list[list[Tensor]] = []

    async def infer(self, model: str, version: int, inputs: list[Tensor], outputs: list[str] | None, *,
                    timeout_s: float, request_id: str = "") -> list[Tensor]:
        self.seen.append(inputs)
        return [Tensor("probability", "FP32", np.array([[0.8]], np.float32))]

    async def signature(self, model: str, version: int) -> Signature:
        return Signature([Spec("numeric", "FP32", (-1, 2)), Spec("categorical", "INT64", (-1, 1))],
                         [Spec("probability", "FP32", (-1, 1))], 8)


async def test_predict_builds_tensors_from_the_registry_input_contract() -> None:
    contract = {"format": "tributary.tabular.v1", "task": "binary", "numeric": ["income", "age"],
                "categorical": [{"name": "home", "vocabulary": ["rent", "own"]}], "classes": ["0", "1"],
                "output": "probability"}
    asked: list[str] = []

    def registry(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        if request.url.path.endswith("/versions/1"):
            return httpx.Response(200, json={"version": 1, "reference_stats": {"input_contract": contract}})
        return httpx.Response(404, json={"error": "no such version"})

    class _Store:
        async def read(self, dataset: str, entity: str) -> dict[str, Any] | None:
            return {}

    backend = _ContractBackend()
    service, sink = _service(backend)
    service.store = _Store()  # type: ignore[assignment]
    service.contracts = RegistryContracts("http://registry", transport=httpx.MockTransport(registry))
    for features in ({"income": 52000.5, "age": None, "home": "own"}, {"income": 1.0, "age": 30, "home": "boat"}):
        result = await service.predict(PredictRequest(model="m", entity="c-1", features=features, dataset="credit"))
        assert result.prediction == pytest.approx(0.8)
    (n1, c1), (n2, c2) = backend.seen
    assert (n1.name, n1.datatype, c1.name, c1.datatype) == ("numeric", "FP32", "categorical", "INT64")
    assert n1.array[0, 0] == np.float32(52000.5) and np.isnan(n1.array[0, 1]) and c1.array.tolist() == [[2]]
    assert n2.array.tolist() == [[1.0, 30.0]] and c2.array.tolist() == [[0]]  # unknown category: 0
    assert asked == ["/v1/models/m/versions/1"]  # read once per version
    await asyncio.sleep(0)  # the event is queued in the loop turn after the answer
    assert sink.events[0].dataset == "credit" and sink.events[0].features["home"] == "own"
    with pytest.raises(InvalidInput, match="must be a finite number"):
        await service.predict(PredictRequest(model="m", entity="c-1", features={"income": "lots"}))
    service.contracts = None
    with pytest.raises(InvalidInput, match="INFERENCE_REGISTRY_URL"):
        await service.predict(PredictRequest(model="m", entity="c-1", features={"income": 1.0}))


def test_registry_settings_refuse_an_analysis_that_could_not_write_aliases() -> None:
    from inference.settings import Settings
    from pydantic import ValidationError

    base = {"triton_grpc_url": "t:1", "redis_url": "redis://r:6379/0"}
    with pytest.raises(ValidationError, match="INFERENCE_REGISTRY_TOKEN"):
        Settings(**base, registry_url="http://registry:8082")
    ok = Settings(**base, registry_url="http://registry:8082", registry_token="trb_x")
    assert ok.registry_token is not None and ok.registry_token.get_secret_value() == "trb_x"
    assert "trb_x" not in repr(ok)


async def test_queued_mirrors_run_as_batches_within_the_model_s_batch_size() -> None:
    calls: list[int] = []

    async def run(model: str, version: int, inputs: list[Tensor], outputs: list[str] | None) -> list[Tensor]:
        calls.append(inputs[0].array.shape[0])
        return [Tensor("y", "FP32", inputs[0].array[:, :1] * 10)]  # row i answers 10 * its first value

    answers: dict[str, float] = {}

    def done(job: MirrorJob, out: list[Tensor], ms: float, diff: float | None) -> None:
        answers[job.request_id] = float(out[0].array[0, 0])

    async def max_rows(model: str, version: int) -> int:
        return 4

    mirror = ShadowMirror(run, done, queue_size=100, workers=1, max_rows=max_rows)
    for i in range(10):
        x = Tensor("x", "FP32", np.array([[float(i), 0.0]], dtype=np.float32))
        assert mirror.offer(MirrorJob("shadow", "m", 2, [x], None, [], 1, f"r{i}"))
    other = Tensor("x", "FP32", np.zeros((1, 3), dtype=np.float32))  # another layout: never in the same batch
    assert mirror.offer(MirrorJob("shadow", "m", 2, [other], None, [], 1, "odd"))
    mirror.start()
    try:
        assert await mirror.idle(10)
    finally:
        await mirror.stop()
    assert sorted(calls) == [1, 2, 4, 4]  # 10 rows in batches of at most 4, the odd one alone
    assert answers == {**{f"r{i}": 10.0 * i for i in range(10)}, "odd": 0.0}
    assert mirror.completed == 11
