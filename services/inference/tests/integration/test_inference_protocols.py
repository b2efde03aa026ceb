"""KServe v2 over REST and gRPC against the gateway, with tritonclient unchanged, and clear 4xx answers."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from inference.settings import Settings
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from services.inference.tests.integration.conftest import MODEL, Gateway, set_rollout, v2_body
from services.inference.tests.onnx_models import reference
from tests.fixtures.triton import TritonServer

pytestmark = pytest.mark.integration

X = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]], dtype=np.float32)


def test_tritonclient_http_works_unchanged(gateway: Gateway) -> None:
    client = httpclient.InferenceServerClient(gateway.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(MODEL)
        meta = client.get_model_metadata(MODEL)
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
        inp = httpclient.InferInput("x", list(X.shape), "FP32")
        inp.set_data_from_numpy(X)  # binary tensor extension, tritonclient's default
        result = client.infer(MODEL, [inp])
        np.testing.assert_allclose(result.as_numpy("y"), reference(1, X), rtol=1e-5)
        json_inp = httpclient.InferInput("x", list(X.shape), "FP32")
        json_inp.set_data_from_numpy(X, binary_data=False)
        out = httpclient.InferRequestedOutput("y", binary_data=False)
        result = client.infer(MODEL, [json_inp], outputs=[out])
        np.testing.assert_allclose(result.as_numpy("y"), reference(1, X), rtol=1e-5)
    finally:
        client.close()


def test_tritonclient_grpc_works_unchanged(gateway: Gateway) -> None:
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(MODEL)
        meta = client.get_model_metadata(MODEL, as_json=True)
        assert meta["versions"] == ["1"]
        inp = grpcclient.InferInput("x", list(X.shape), "FP32")
        inp.set_data_from_numpy(X)
        result = client.infer(MODEL, [inp], parameters={"entity_id": "c-1"})
        np.testing.assert_allclose(result.as_numpy("y"), reference(1, X), rtol=1e-5)
        assert result.get_response().model_version == "1"
        params = result.get_response().parameters
        assert (params["tributary_route"].string_param, params["tributary_backend"].string_param) == (
            "champion", "triton")
    finally:
        client.close()
    # The same names in the trailing metadata, for callers that read metadata.
    with grpc.insecure_channel(gateway.grpc_url) as channel:
        request = pb.ModelInferRequest(model_name=MODEL, raw_input_contents=[X.tobytes()])
        request.inputs.add(name="x", datatype="FP32", shape=list(X.shape))
        _, call = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer.with_call(request, timeout=10)
        trailing = dict(call.trailing_metadata())
    assert trailing["x-tributary-model-version"] == "1" and trailing["x-tributary-route"] == "champion"


def test_inference_calls_to_triton_over_grpc_alone_give_the_same_answers(
        served: TritonServer, settings_for: Callable[..., Settings],
        gateway_factory: Callable[[Settings], Gateway]) -> None:
    # Without Triton's HTTP URL every call to Triton goes over gRPC (with it, as the other tests: HTTP).
    g = gateway_factory(settings_for(served, triton_http_url=None))
    set_rollout(g, "champion", 1)
    response = httpx.post(f"{g.url}/v2/models/{MODEL}/infer", json=v2_body(X.tolist()), timeout=10)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(np.array(response.json()["outputs"][0]["data"]), reference(1, X).reshape(-1),
                               rtol=1e-5)
    assert g.service.backend.runner._http is None
    bad = httpx.post(f"{g.url}/v2/models/{MODEL}/versions/9/infer", json=v2_body(X.tolist()), timeout=10)
    assert bad.status_code == 404, bad.text


def test_answers_name_the_version_and_route(gateway: Gateway) -> None:
    response = httpx.post(f"{gateway.url}/v2/models/{MODEL}/infer", json=v2_body(X.tolist(), id="req-1"),
                          headers={"x-tributary-entity": "c-9"})
    assert response.status_code == 200, response.text
    assert response.headers["x-tributary-model-version"] == "1"
    assert response.headers["x-tributary-route"] == "champion"
    assert response.headers["x-tributary-backend"] == "triton"
    body = response.json()
    assert body["id"] == "req-1" and body["model_version"] == "1"
    np.testing.assert_allclose(np.array(body["outputs"][0]["data"]), reference(1, X).reshape(-1), rtol=1e-5)


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        ({"inputs": []}, 400, "non-empty 'inputs'"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}, 400, "shape [-1, 4]"),
        ({"inputs": [{"name": "x", "datatype": "INT64", "shape": [1, 4], "data": [1, 2, 3, 4]}]}, 400, "is FP32"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3]}]}, 400, "needs 4 values"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": ["a", 2, 3, 4]}]}, 400, "not FP32"),
        ({"inputs": [{"name": "x", "datatype": "FP99", "shape": [1, 4], "data": [1, 2, 3, 4]}]}, 400,
         "unknown datatype"),
        ({"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}, 400, "no input 'z'"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, -4], "data": [1, 2, 3, 4]}]}, 400, "negative"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                      "parameters": {"binary_data_size": 16}}]}, 400, "runs past"),
    ],
)
def test_malformed_requests_get_a_clear_400(gateway: Gateway, body: object, status: int, fragment: str) -> None:
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = httpx.post(f"{gateway.url}/v2/models/{MODEL}/infer", **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def test_unknown_models_and_versions_get_404(gateway: Gateway) -> None:
    response = httpx.post(f"{gateway.url}/v2/models/nope/infer", json=v2_body(X.tolist()))
    assert response.status_code == 404
    assert "no rollout" in response.json()["error"]
    response = httpx.post(f"{gateway.url}/v2/models/{MODEL}/versions/2/infer", json=v2_body(X.tolist()))
    assert response.status_code == 404
    assert "not in its rollout" in response.json()["error"]
    assert httpx.get(f"{gateway.url}/v2/models/nope").status_code == 404


def test_grpc_errors_carry_the_matching_codes(gateway: Gateway) -> None:
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    try:
        bad = grpcclient.InferInput("x", [1, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
        with pytest.raises(InferenceServerException) as err:
            client.infer(MODEL, [bad])
        assert "INVALID_ARGUMENT" in str(err.value.status()) and "shape [-1, 4]" in err.value.message()
        good = grpcclient.InferInput("x", [1, 4], "FP32")
        good.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
        with pytest.raises(InferenceServerException) as err:
            client.infer("nope", [good])
        assert "NOT_FOUND" in str(err.value.status())
        wrong_type = grpcclient.InferInput("x", [1, 4], "FP64")
        wrong_type.set_data_from_numpy(np.zeros((1, 4), dtype=np.float64))
        with pytest.raises(InferenceServerException) as err:
            client.infer(MODEL, [wrong_type])
        assert "INVALID_ARGUMENT" in str(err.value.status())
    finally:
        client.close()


def test_grpc_model_config_and_statistics_are_triton_s_for_the_rollout_versions(gateway: Gateway) -> None:
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    try:
        config = client.get_model_config(MODEL, as_json=True)["config"]
        assert config["name"] == MODEL and int(config["max_batch_size"]) == 64
        assert [i["name"] for i in config["input"]] == ["x"]
        inp = grpcclient.InferInput("x", list(X.shape), "FP32")
        inp.set_data_from_numpy(X)
        before = client.get_inference_statistics(MODEL, as_json=True)["model_stats"]
        assert [s["version"] for s in before] == ["1"]  # only the rollout's versions, though Triton holds 1-4
        for _ in range(3):
            client.infer(MODEL, [inp])
        after = client.get_inference_statistics(MODEL, as_json=True)["model_stats"]
        # Triton counts inferences by rows: three requests of X's rows each.
        assert int(after[0].get("inference_count", 0)) - int(before[0].get("inference_count", 0)) == 3 * len(X)
        every = client.get_inference_statistics(as_json=True)["model_stats"]
        assert {(s["name"], s["version"]) for s in every} == {(MODEL, "1")}
        for call in (lambda: client.get_model_config("nope"), lambda: client.get_model_config(MODEL, "3"),
                     lambda: client.get_inference_statistics("nope"),
                     lambda: client.get_inference_statistics(MODEL, "2")):
            with pytest.raises(InferenceServerException) as err:
                call()
            assert "NOT_FOUND" in str(err.value.status()), err.value.message()
    finally:
        client.close()


def test_pinned_version_of_the_rollout(gateway: Gateway) -> None:
    set_rollout(gateway, "shadow", 2)
    response = httpx.post(f"{gateway.url}/v2/models/{MODEL}/versions/2/infer", json=v2_body(X.tolist()))
    assert response.status_code == 200, response.text
    assert response.headers["x-tributary-route"] == "pinned"
    np.testing.assert_allclose(np.array(response.json()["outputs"][0]["data"]), reference(2, X).reshape(-1),
                               rtol=1e-5)
