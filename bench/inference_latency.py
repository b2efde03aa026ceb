"""Inference gateway against calling the same Triton directly, same model, same run.

Started here: a Kafka broker, a Redis server, the local CPU Triton (``deploy/triton.py``) serving
one small ONNX model, and the gateway as its own process (``python -m inference``). Measured:

* latency (p50/p99) of sequential single-row calls with ``tritonclient.http`` and
  ``tritonclient.grpc``, once against Triton and once against the gateway: the gateway's overhead;
* throughput of concurrent gRPC calls through the gateway with no shadow, then with every request
  mirrored to a shadow version;
* rows/s and p95 at concurrency 16 through the gateway to a model with Triton's dynamic batching
  against the same model without it.

Everything shares one machine (on the reference box: 2 cores), so client, gateway and Triton
compete for CPU; the figures are what this machine does, not a capacity claim.
"""

from __future__ import annotations

import asyncio
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
ROW = np.linspace(-1, 1, FEATURES, dtype=np.float32).reshape(1, FEATURES)


def _onnx(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(size=(FEATURES, 32)).astype(np.float32), "W1")
    w2 = numpy_helper.from_array(rng.normal(size=(32, 1)).astype(np.float32), "W2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "W2"], ["z"]), helper.make_node("Sigmoid", ["z"], ["y"])],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def _config(name: str, *, batching: bool) -> str:
    text = (f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 64\n'
            "version_policy: { specific: { versions: [1, 2] } }\n"
            f'input [ {{ name: "x" data_type: TYPE_FP32 dims: [{FEATURES}] }} ]\n'
            'output [ { name: "y" data_type: TYPE_FP32 dims: [1] } ]\n')
    if batching:
        text += "dynamic_batching { max_queue_delay_microseconds: 2000 }\n"
    return text


def _registry_repo(root: Path) -> None:
    for name, batching in (("bench", True), ("bench_unbatched", False)):
        for version in (1, 2):
            (root / name / str(version)).mkdir(parents=True)
            (root / name / str(version) / "model.onnx").write_bytes(_onnx(version))
        (root / name / "config.pbtxt").write_text(_config(name, batching=batching))


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
    inp.set_data_from_numpy(ROW)
    return lambda: client.infer(model, [inp])


def _grpc_call(url: str, model: str) -> Callable[[], Any]:
    client = grpcclient.InferenceServerClient(url)
    inp = grpcclient.InferInput("x", [1, FEATURES], "FP32")
    inp.set_data_from_numpy(ROW)
    return lambda: client.infer(model, [inp])


async def _concurrent(url: str, model: str, *, requests: int, concurrency: int, rows: int = 1
                      ) -> tuple[float, list[float]]:
    """Requests/s of ``concurrency`` gRPC callers, and every latency in seconds."""
    client = grpcaio.InferenceServerClient(url)
    data = np.repeat(ROW, rows, axis=0)
    latencies: list[float] = []
    left = requests

    async def worker(i: int) -> None:
        nonlocal left
        inp = grpcaio.InferInput("x", [rows, FEATURES], "FP32")
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
        port, grpc_port = free_port(), free_port()
        gateway = ServiceProcess("inference", "inference", {
            "INFERENCE_TRITON_GRPC_URL": triton.grpc_url, "INFERENCE_REDIS_URL": redis_url,
            "INFERENCE_KAFKA_BOOTSTRAP": broker.bootstrap, "INFERENCE_PORT": str(port),
            "INFERENCE_GRPC_PORT": str(grpc_port), "INFERENCE_LOG_LEVEL": "WARNING",
            "INFERENCE_CANARY_ANALYSIS": "false", "INFERENCE_MAX_INFLIGHT": "1024",
        }, ready_url=f"http://127.0.0.1:{port}/readyz", log_path=tmp / "inference.log")
        try:
            broker.start()
            triton.start()
            triton.load("bench")
            triton.load("bench_unbatched")
            gateway.start()
            url, gw_grpc = f"127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"
            for model in ("bench", "bench_unbatched"):
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
            off_rps, off_lat = asyncio.run(_concurrent(gw_grpc, "bench", requests=n_conc, concurrency=16))
            httpx.put(f"http://{url}/v1/rollout/bench", json={"alias": "shadow", "version": 2,
                                                              "reason": "benchmark"}).raise_for_status()
            time.sleep(0.5)
            on_rps, on_lat = asyncio.run(_concurrent(gw_grpc, "bench", requests=n_conc, concurrency=16))
            metrics = httpx.get(f"http://{url}/metrics").text
            dropped = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                          if line.startswith("inference_shadow_dropped_total{"))
            print(f"throughput (gRPC, 16 concurrent): Triton direct {direct_rps:,.0f}/s, gateway {off_rps:,.0f}/s, "
                  f"gateway with 100% shadow {on_rps:,.0f}/s ({dropped:.0f} mirrors dropped, counted)")
            rows.append(("gRPC throughput, 16 concurrent, req/s", f"{off_rps:,.0f}", f"{direct_rps:,.0f} (Triton)",
                         f"{off_rps / direct_rps:.2f}", "-"))
            rows.append((f"throughput with 100% shadow ({dropped:.0f} mirrors shed), req/s", f"{on_rps:,.0f}",
                         f"{off_rps:,.0f} (shadow off)", f"{on_rps / off_rps:.2f}", ">= 0.75"))
            p99_on, p99_off = _pcts(on_lat)[2], _pcts(off_lat)[2]
            rows.append(("p99 with 100% shadow, 16 concurrent", f"{p99_on:.1f} ms", f"{p99_off:.1f} ms (shadow off)",
                         f"{p99_on / p99_off:.2f}", "-"))

            b_rps, b_lat = asyncio.run(_concurrent(gw_grpc, "bench", requests=n_conc, concurrency=16))
            u_rps, u_lat = asyncio.run(_concurrent(gw_grpc, "bench_unbatched", requests=n_conc, concurrency=16))
            b95, u95 = _pcts(b_lat)[1], _pcts(u_lat)[1]
            print(f"dynamic batching at 16 concurrent: {b_rps:,.0f} rows/s p95 {b95:.1f} ms; unbatched "
                  f"{u_rps:,.0f} rows/s p95 {u95:.1f} ms")
            rows.append(("dynamic batching, 16 concurrent, rows/s", f"{b_rps:,.0f}", f"{u_rps:,.0f} (unbatched)",
                         f"{b_rps / u_rps:.2f}", ">= 3"))
            rows.append(("dynamic batching p95, 16 concurrent", f"{b95:.1f} ms", f"{u95:.1f} ms (unbatched)",
                         f"{b95 / u95:.2f}", "<= 2"))
            # The same comparison straight to Triton, to show where the limit is.
            tb_rps, tb_lat = asyncio.run(_concurrent(triton.grpc_url, "bench", requests=n_conc, concurrency=16))
            tu_rps, tu_lat = asyncio.run(_concurrent(triton.grpc_url, "bench_unbatched", requests=n_conc,
                                                     concurrency=16))
            tb95, tu95 = _pcts(tb_lat)[1], _pcts(tu_lat)[1]
            print(f"Triton direct at 16 concurrent: batched {tb_rps:,.0f} rows/s p95 {tb95:.1f} ms; unbatched "
                  f"{tu_rps:,.0f} rows/s p95 {tu95:.1f} ms")
            rows.append(("(Triton direct) dynamic batching, rows/s / p95", f"{tb_rps:,.0f} / {tb95:.1f} ms",
                         f"{tu_rps:,.0f} / {tu95:.1f} ms (unbatched)", f"{tb_rps / tu_rps:.2f} / {tb95 / tu95:.2f}",
                         ">= 3 / <= 2"))
        finally:
            gateway.stop()
            triton.stop()
            redis.terminate()
            redis.wait(10)
            broker.stop()
    return rows
