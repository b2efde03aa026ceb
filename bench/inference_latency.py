"""Inference gateway against calling the same Triton directly, same model, same run.

Started here: a Kafka broker, a Redis server, the local CPU Triton (``deploy/triton.py``) serving
one small ONNX model, and the gateway as its own process (``python -m inference``), which calls
Triton over its HTTP endpoint (``INFERENCE_TRITON_HTTP_URL``) and gRPC for metadata. Measured:

* latency (p50/p99) of sequential single-row calls with ``tritonclient.http`` and
  ``tritonclient.grpc``, once against Triton and once against the gateway: the gateway's overhead;
* throughput of concurrent gRPC calls through the gateway with no shadow, then with every request
  mirrored to a shadow version;
* rows/s and p95 at concurrency 16, through the gateway (coalescing concurrent requests per version,
  the default), through a second gateway with coalescing off, and to Triton directly, to a model
  with Triton's dynamic batching against the same model without it, with the average batch Triton
  formed (its statistics) and each gateway's CPU per request; then each way the gateway batches
  (Triton's dynamic batching, the gateway's own coalescing) against nothing batched anywhere
  (coalescing off, model without dynamic batching), the comparison the target is set on. Twice:
  on the small model above, where a call's cost is all per-request overhead (client, gRPC, Triton's Python backend) so
  batching has nothing to amortise, and on a wider MLP (1024 -> 2048 -> 2048 -> 2048 -> 1, 42 MB
  of FP32 weights, about 2.5 ms per single-row run on one core), where a batch of 16 costs far
  less than 16 single rows.

Everything shares one machine (on the reference box: 2 cores), so client, gateway and Triton
compete for CPU; the figures are what this machine does, not a capacity claim.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from onnx import TensorProto, helper, numpy_helper

from deploy.localstack import Broker, ServiceProcess, free_port
from deploy.triton import TritonServer, python_backend_repository

FEATURES = 16
WIDE_FEATURES, WIDE_HIDDEN, WIDE_LAYERS = 1024, 2048, 3
"""The wide MLP of the batching comparison: 42 MB of weights, compute per call that batching can share."""


def _row(features: int) -> np.ndarray:
    return np.linspace(-1, 1, features, dtype=np.float32).reshape(1, features)


def _onnx(seed: int, features: int = FEATURES, hidden: int = 32, layers: int = 1) -> bytes:
    """An MLP ``features -> hidden (x layers, ReLU) -> 1 (sigmoid)`` with random weights."""
    rng = np.random.default_rng(seed)
    nodes, weights, previous, width = [], [], "x", features
    for i in range(layers):
        weights.append(numpy_helper.from_array(
            (rng.normal(size=(width, hidden)) / np.sqrt(width)).astype(np.float32), f"W{i}"))
        nodes += [helper.make_node("MatMul", [previous, f"W{i}"], [f"h{i}"]),
                  helper.make_node("Relu", [f"h{i}"], [f"r{i}"])]
        previous, width = f"r{i}", hidden
    weights.append(numpy_helper.from_array(rng.normal(size=(width, 1)).astype(np.float32), "WO"))
    nodes += [helper.make_node("MatMul", [previous, "WO"], ["z"]), helper.make_node("Sigmoid", ["z"], ["y"])]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def _config(name: str, *, batching: bool, features: int = FEATURES, versions: tuple[int, ...] = (1, 2)) -> str:
    text = (f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 64\n'
            f"version_policy: {{ specific: {{ versions: [{', '.join(map(str, versions))}] }} }}\n"
            f'input [ {{ name: "x" data_type: TYPE_FP32 dims: [{features}] }} ]\n'
            'output [ { name: "y" data_type: TYPE_FP32 dims: [1] } ]\n')
    if batching:
        text += "dynamic_batching { max_queue_delay_microseconds: 2000 }\n"
    return text


MODELS = ("bench", "bench_unbatched", "wide", "wide_unbatched")


def _registry_repo(root: Path) -> None:
    for name, batching in (("bench", True), ("bench_unbatched", False)):
        for version in (1, 2):
            (root / name / str(version)).mkdir(parents=True)
            (root / name / str(version) / "model.onnx").write_bytes(_onnx(version))
        (root / name / "config.pbtxt").write_text(_config(name, batching=batching))
    wide = _onnx(1, WIDE_FEATURES, WIDE_HIDDEN, WIDE_LAYERS)
    for name, batching in (("wide", True), ("wide_unbatched", False)):
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.onnx").write_bytes(wide)
        (root / name / "config.pbtxt").write_text(_config(name, batching=batching, features=WIDE_FEATURES,
                                                          versions=(1,)))


def _average_batch(triton_http: str, model: str, before: dict[str, int] | None = None) -> dict[str, int]:
    """Triton's request and execution counts of ``model`` (less ``before``): their ratio is the average batch."""
    stats = httpx.get(f"{triton_http}/v2/models/{model}/stats").json()["model_stats"]
    counts = {"inferences": sum(s["inference_count"] for s in stats),
              "executions": sum(s["execution_count"] for s in stats)}
    return {k: v - (before or {}).get(k, 0) for k, v in counts.items()}


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pcts(samples: list[float]) -> tuple[float, float, float]:
    s = sorted(samples)
    pick = lambda q: s[min(len(s) - 1, int(len(s) * q))] * 1000  # noqa: E731
    return pick(0.5), pick(0.95), pick(0.99)


def _sequential(call: Callable[[], Any], n: int) -> list[float]:
    for _ in range(min(200, n)):
        call()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def _http_call(url: str, model: str) -> Callable[[], Any]:
    client = httpclient.InferenceServerClient(url)
    inp = httpclient.InferInput("x", [1, FEATURES], "FP32")
    inp.set_data_from_numpy(_row(FEATURES))
    return lambda: client.infer(model, [inp])


def _grpc_call(url: str, model: str) -> Callable[[], Any]:
    client = grpcclient.InferenceServerClient(url)
    inp = grpcclient.InferInput("x", [1, FEATURES], "FP32")
    inp.set_data_from_numpy(_row(FEATURES))
    return lambda: client.infer(model, [inp])


async def _concurrent(url: str, model: str, *, requests: int, concurrency: int, rows: int = 1,
                      features: int = FEATURES) -> tuple[float, list[float]]:
    """Requests/s of ``concurrency`` gRPC callers, and every latency in seconds."""
    client = grpcaio.InferenceServerClient(url)
    data = np.repeat(_row(features), rows, axis=0)
    latencies: list[float] = []
    left = requests

    async def worker(i: int) -> None:
        nonlocal left
        inp = grpcaio.InferInput("x", [rows, features], "FP32")
        inp.set_data_from_numpy(data)
        while left > 0:
            left -= 1
            t0 = time.perf_counter()
            await client.infer(model, [inp], parameters={"entity_id": f"e-{i}-{left}"})
            latencies.append(time.perf_counter() - t0)

    try:
        await asyncio.gather(*(worker(i) for i in range(concurrency)))  # warm-up round
        latencies.clear()
        left = requests
        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        await client.close()
    return requests / elapsed, latencies


def _redis(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() != b"PONG":
        if time.monotonic() > deadline:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    return process, f"redis://127.0.0.1:{port}/0"


def run(*, quick: bool = False) -> list[tuple[str, str, str, str, str]]:
    n_seq, n_conc = (300, 1000) if quick else (2000, 4000)
    rows: list[tuple[str, str, str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp_name:
        tmp = Path(tmp_name)
        broker = Broker(tmp / "kafka")
        registry = tmp / "registry-repo"
        _registry_repo(registry)
        triton = TritonServer(tmp / "triton-repo", tmp / "triton")
        python_backend_repository(registry, triton.repository)
        redis, redis_url = _redis(tmp)
        port, grpc_port, off_port, off_grpc_port = free_port(), free_port(), free_port(), free_port()
        common = {"INFERENCE_TRITON_GRPC_URL": triton.grpc_url, "INFERENCE_TRITON_HTTP_URL": triton.http_url,
                  "INFERENCE_REDIS_URL": redis_url,
                  "INFERENCE_KAFKA_BOOTSTRAP": broker.bootstrap, "INFERENCE_LOG_LEVEL": "WARNING",
                  "INFERENCE_CANARY_ANALYSIS": "false", "INFERENCE_MAX_INFLIGHT": "1024"}
        gateway = ServiceProcess("inference", "inference", {
            **common, "INFERENCE_PORT": str(port), "INFERENCE_GRPC_PORT": str(grpc_port),
        }, ready_url=f"http://127.0.0.1:{port}/readyz", log_path=tmp / "inference.log")
        # The same gateway without coalescing, for the batching comparison in the same run.
        uncoalesced = ServiceProcess("inference", "inference", {
            **common, "INFERENCE_PORT": str(off_port), "INFERENCE_GRPC_PORT": str(off_grpc_port),
            "INFERENCE_COALESCE": "off",
        }, ready_url=f"http://127.0.0.1:{off_port}/readyz", log_path=tmp / "inference-uncoalesced.log")
        try:
            broker.start()
            triton.start()
            for model in MODELS:
                triton.load(model)
            gateway.start()
            uncoalesced.start()
            url, gw_grpc = f"127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"
            off_grpc = f"127.0.0.1:{off_grpc_port}"
            for model in MODELS:
                httpx.put(f"http://{url}/v1/rollout/{model}", json={"alias": "champion", "version": 1,
                                                                    "reason": "benchmark"}).raise_for_status()
            time.sleep(0.5)  # let the gateway's rollout refresher pick the change up (every 0.25 s)

            for proto, call, t_url in (("REST", _http_call, f"127.0.0.1:{triton.http_port}"),
                                       ("gRPC", _grpc_call, triton.grpc_url)):
                direct = _pcts(_sequential(call(t_url, "bench"), n_seq))
                ours = _pcts(_sequential(call(url if proto == "REST" else gw_grpc, "bench"), n_seq))
                d50, d99 = ours[0] - direct[0], ours[2] - direct[2]
                print(f"{proto}: gateway p50 {ours[0]:.2f} ms p99 {ours[2]:.2f} ms; Triton direct p50 "
                      f"{direct[0]:.2f} ms p99 {direct[2]:.2f} ms; overhead p50 {d50:+.2f} ms, p99 {d99:+.2f} ms")
                rows.append((f"{proto} single row, p50 / p99 (overhead {d50:+.2f} / {d99:+.2f} ms)",
                             f"{ours[0]:.2f} / {ours[2]:.2f} ms", f"{direct[0]:.2f} / {direct[2]:.2f} ms (Triton)",
                             f"{ours[0] / direct[0]:.2f} / {ours[2] / direct[2]:.2f}",
                             "overhead <= 1 ms p50, <= 2.5 ms p99"))

            direct_rps, _ = asyncio.run(_concurrent(triton.grpc_url, "bench", requests=n_conc, concurrency=16))
            assert gateway.process is not None
            cpu_before = _cpu_s(gateway.process.pid)
            off_rps, off_lat = asyncio.run(_concurrent(gw_grpc, "bench", requests=n_conc, concurrency=16))
            # _concurrent makes a warm-up round and a measured round of n_conc requests each.
            gw_cpu_ms = (_cpu_s(gateway.process.pid) - cpu_before) / (2 * n_conc) * 1000
            httpx.put(f"http://{url}/v1/rollout/bench", json={"alias": "shadow", "version": 2,
                                                              "reason": "benchmark"}).raise_for_status()
            time.sleep(0.5)
            on_rps, on_lat = asyncio.run(_concurrent(gw_grpc, "bench", requests=n_conc, concurrency=16))
            metrics = httpx.get(f"http://{url}/metrics").text
            dropped = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                          if line.startswith("inference_shadow_dropped_total{"))
            print(f"throughput (gRPC, 16 concurrent): Triton direct {direct_rps:,.0f}/s, gateway {off_rps:,.0f}/s, "
                  f"gateway with 100% shadow {on_rps:,.0f}/s ({dropped:.0f} mirrors dropped, counted); gateway CPU "
                  f"per request (shadow off) {gw_cpu_ms:.2f} ms")
            rows.append((f"gRPC throughput, 16 concurrent, req/s (gateway CPU {gw_cpu_ms:.2f} ms per request)",
                         f"{off_rps:,.0f}", f"{direct_rps:,.0f} (Triton)",
                         f"{off_rps / direct_rps:.2f}", "-"))
            rows.append((f"throughput with 100% shadow ({dropped:.0f} mirrors shed), req/s", f"{on_rps:,.0f}",
                         f"{off_rps:,.0f} (shadow off)", f"{on_rps / off_rps:.2f}", ">= 0.75"))
            p99_on, p99_off = _pcts(on_lat)[2], _pcts(off_lat)[2]
            rows.append(("p99 with 100% shadow, 16 concurrent", f"{p99_on:.1f} ms", f"{p99_off:.1f} ms (shadow off)",
                         f"{p99_on / p99_off:.2f}", "-"))

            for batched, unbatched, features, label in (
                    ("bench", "bench_unbatched", FEATURES, "small MLP 16-32-1, 2 KB"),
                    ("wide", "wide_unbatched", WIDE_FEATURES, "wide MLP 1024-2048x3-1, 42 MB")):
                n_batch = n_conc if features == FEATURES else n_conc // 4
                assert uncoalesced.process is not None
                measured: dict[tuple[str, str], tuple[float, float, float, float]] = {}
                for where, target, pid in (("gateway", gw_grpc, gateway.process.pid),
                                           ("gateway, coalescing off", off_grpc, uncoalesced.process.pid),
                                           ("Triton direct", triton.grpc_url, None)):
                    for model in (batched, unbatched):
                        before = _average_batch(triton.http_url, model)
                        cpu_before = _cpu_s(pid) if pid is not None else 0.0
                        rps, lat = asyncio.run(_concurrent(target, model, requests=n_batch, concurrency=16,
                                                           features=features))
                        cpu_ms = (_cpu_s(pid) - cpu_before) / (2 * n_batch) * 1000 if pid is not None else 0.0
                        counts = _average_batch(triton.http_url, model, before)
                        measured[where, model] = (rps, _pcts(lat)[1],
                                                  counts["inferences"] / max(1, counts["executions"]), cpu_ms)
                    (b_rps, b95, b_avg, b_cpu), (u_rps, u95, _, u_cpu) = measured[where, batched], measured[
                        where, unbatched]
                    cpu = f"; gateway CPU per request {b_cpu:.2f} / {u_cpu:.2f} ms" if pid is not None else ""
                    print(f"dynamic batching, {label}, {where}, 16 concurrent: {b_rps:,.0f} rows/s p95 {b95:.1f} ms "
                          f"(Triton's average batch {b_avg:.1f}); model without it {u_rps:,.0f} rows/s p95 "
                          f"{u95:.1f} ms{cpu}")
                    # With coalescing on, the gateway batches the calls to the model without dynamic
                    # batching itself: that column is not an unbatched baseline, so no target there.
                    coalesced = where == "gateway"
                    rows.append((f"Triton's dynamic batching, {label}, {where}, 16 concurrent: rows/s / p95 "
                                 f"(average batch {b_avg:.1f}{cpu})", f"{b_rps:,.0f} / {b95:.1f} ms",
                                 f"{u_rps:,.0f} / {u95:.1f} ms (model without dynamic batching"
                                 f"{', calls coalesced by the gateway' if coalesced else ''})",
                                 f"{b_rps / u_rps:.2f} / {b95 / u95:.2f}", "-" if coalesced else ">= 3 / <= 2"))
                # Each way the gateway batches, as deployed (coalescing "auto": the gateway coalesces calls
                # to versions Triton does not batch and leaves the others to Triton's dynamic batching),
                # against nothing batched anywhere (coalescing off, model without dynamic batching).
                (u_rps, u95, _, _) = measured["gateway, coalescing off", unbatched]
                for how, (b_rps, b95, _, _) in (("Triton's dynamic batching", measured["gateway", batched]),
                                                ("the gateway's coalescing", measured["gateway", unbatched])):
                    print(f"batching through the gateway by {how}, {label}: {b_rps:,.0f} rows/s p95 {b95:.1f} ms "
                          f"against nothing batched {u_rps:,.0f} rows/s p95 {u95:.1f} ms: {b_rps / u_rps:.2f}x, "
                          f"p95 {b95 / u95:.2f}x")
                    rows.append((f"batching through the gateway by {how}, {label}, 16 concurrent: rows/s / p95",
                                 f"{b_rps:,.0f} / {b95:.1f} ms",
                                 f"{u_rps:,.0f} / {u95:.1f} ms (nothing batched: coalescing off, model without "
                                 "dynamic batching)", f"{b_rps / u_rps:.2f} / {b95 / u95:.2f}", ">= 3 / <= 2"))
        finally:
            uncoalesced.stop()
            gateway.stop()
            triton.stop()
            redis.terminate()
            redis.wait(10)
            broker.stop()
    return rows
