"""The serving engine over the KServe v2 (Open Inference Protocol) HTTP API, for the serving check.

Inputs go as raw little-endian bytes (the binary tensor data extension Triton implements), so
NaN, the contract's "missing", survives the trip; outputs come back as JSON.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import httpx
import numpy as np

from trainer.errors import ServingUnavailable

DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.float64): "FP64"}


class TritonClient:
    """``ready`` and ``infer`` of one model version on a KServe v2 server."""

    def __init__(self, base_url: str, *, timeout_s: float = 30.0) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def ready(self, model: str, version: int) -> bool:
        """Whether the version is loaded and ready."""
        try:
            return self._http.get(f"/v2/models/{model}/versions/{version}/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, model: str, version: int, timeout_s: float) -> None:
        """Poll readiness until ``timeout_s``.

        Raises:
            ServingUnavailable: the version did not become ready in time.

        """
        deadline = time.monotonic() + timeout_s
        while not self.ready(model, version):
            if time.monotonic() > deadline:
                raise ServingUnavailable(f"{model} version {version} did not become ready in Triton within "
                                         f"{timeout_s}s")
            time.sleep(0.2)

    def infer(self, model: str, version: int, inputs: Mapping[str, np.ndarray], output: str) -> np.ndarray:
        """The ``output`` tensor for ``inputs``.

        Raises:
            ServingUnavailable: the server could not be reached or refused the request.

        """
        header: dict[str, Any] = {"inputs": [], "outputs": [{"name": output, "parameters": {"binary_data": False}}]}
        blobs: list[bytes] = []
        for name, array in inputs.items():
            data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            header["inputs"].append({"name": name, "shape": list(array.shape), "datatype": DATATYPES[array.dtype],
                                     "parameters": {"binary_data_size": len(data)}})
            blobs.append(data)
        head = json.dumps(header).encode()
        try:
            response = self._http.post(
                f"/v2/models/{model}/versions/{version}/infer", content=head + b"".join(blobs),
                headers={"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"})
        except httpx.HTTPError as exc:
            raise ServingUnavailable(f"Triton did not answer: {exc!r}") from exc
        if response.status_code != 200:
            raise ServingUnavailable(f"Triton refused the inference ({response.status_code}): {response.text[:300]}")
        for out in response.json().get("outputs", []):
            if out["name"] == output:
                return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
        raise ServingUnavailable(f"Triton's answer has no output {output!r}")
