"""The Triton model repository the registry materialises, and Triton's model control client.

Layout (what ``tritonserver --model-repository=<repo> --model-control-mode=explicit`` loads)::

    <repo>/<model>/config.pbtxt
    <repo>/<model>/<version>/model.onnx

Every registered version gets its ``model.onnx``. Triton keeps one ``config.pbtxt`` per model,
shared by its versions; its ``version_policy`` lists the versions an alias points at (the
serving set), so loading the model loads exactly those. Files are written to a temporary name
and renamed, so Triton never reads half a file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import httpx
from schemas.registry import TensorSpec

from registry.domain import Signature
from registry.errors import InvalidName, TritonError
from registry.names import check_model_name

PREFLIGHT_PREFIX = "_preflight-"
"""Prefix of the scratch model a new version is test-loaded as (``_preflight-<model>``) before the
serving model is reloaded with it; no registered model name can start with ``_``."""

_TRITON_TYPES = {
    "BOOL": "TYPE_BOOL", "INT8": "TYPE_INT8", "INT16": "TYPE_INT16", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64",
    "UINT8": "TYPE_UINT8", "FP16": "TYPE_FP16", "FP32": "TYPE_FP32", "FP64": "TYPE_FP64", "BYTES": "TYPE_STRING",
}


def batchable(signature: Signature) -> bool:
    """True when every input and output has a dynamic first dimension (the batch)."""
    return all(s.shape and s.shape[0] == -1 for s in (*signature.inputs, *signature.outputs))


def render_config(
    model: str,
    signature: Signature,
    *,
    versions: Sequence[int],
    max_batch_size: int,
    max_queue_delay_us: int,
    max_queue_size: int = 0,
    queue_timeout_us: int = 0,
) -> str:
    """The ``config.pbtxt`` of ``model`` serving ``versions`` with ``signature``.

    When every tensor has a dynamic first dimension, that dimension is Triton's batch
    dimension: it is left out of ``dims`` and dynamic batching is on. Otherwise the model
    takes whole tensors (``max_batch_size: 0``) and dynamic batching is off.

    ``max_queue_size`` (0: unbounded, Triton's default) bounds the requests waiting in the
    batcher's queue; beyond it Triton refuses at once ("exceeds maximum queue size", which the
    gateway answers 429), so overload is shed instead of queued. ``queue_timeout_us`` (0: none)
    refuses a request that waited longer than that in the queue.

    >>> print(render_config("m", Signature(inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 3])],
    ...                                    outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 1])]),
    ...                     versions=[1], max_batch_size=8, max_queue_delay_us=100, max_queue_size=64,
    ...                     queue_timeout_us=500000).split("dynamic_batching")[1])
     {
      max_queue_delay_microseconds: 100
      default_queue_policy {
        max_queue_size: 64
        default_timeout_microseconds: 500000
        timeout_action: REJECT
      }
    }
    <BLANKLINE>

    >>> sig = Signature(inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 3])],
    ...                 outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 1])])
    >>> print(render_config("m", sig, versions=[2, 1], max_batch_size=8, max_queue_delay_us=100))
    name: "m"
    platform: "onnxruntime_onnx"
    max_batch_size: 8
    version_policy: { specific: { versions: [1, 2] } }
    input [
      {
        name: "x"
        data_type: TYPE_FP32
        dims: [3]
      }
    ]
    output [
      {
        name: "y"
        data_type: TYPE_FP32
        dims: [1]
      }
    ]
    dynamic_batching {
      max_queue_delay_microseconds: 100
    }
    <BLANKLINE>
    """
    batch = max_batch_size > 0 and batchable(signature)
    lines = [
        f'name: "{model}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size if batch else 0}",
        f"version_policy: {{ specific: {{ versions: [{', '.join(str(v) for v in sorted(set(versions)))}] }} }}",
    ]
    lines += _tensors("input", signature.inputs, batch) + _tensors("output", signature.outputs, batch)
    if batch:
        lines += ["dynamic_batching {", f"  max_queue_delay_microseconds: {max_queue_delay_us}"]
        if max_queue_size > 0 or queue_timeout_us > 0:
            lines += ["  default_queue_policy {"]
            lines += [f"    max_queue_size: {max_queue_size}"] if max_queue_size > 0 else []
            lines += [f"    default_timeout_microseconds: {queue_timeout_us}"] if queue_timeout_us > 0 else []
            lines += ["    timeout_action: REJECT", "  }"]
        lines += ["}"]
    return "\n".join(lines) + "\n"


def _tensors(kind: str, specs: Sequence[TensorSpec], batch: bool) -> list[str]:
    out = [f"{kind} ["]
    for i, spec in enumerate(specs):
        dims = spec.shape[1:] if batch else spec.shape
        out += [
            "  {",
            f'    name: "{_escape(spec.name)}"',
            f"    data_type: {_TRITON_TYPES[spec.datatype]}",
            f"    dims: [{', '.join(str(d) for d in dims)}]",
            "  }" + ("," if i < len(specs) - 1 else ""),
        ]
    return [*out, "]"]


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class TritonRepository:
    """Writes the model repository under ``root``.

    Args:
        root: the repository directory Triton is started with.
        max_batch_size: ``max_batch_size`` of batchable models.
        max_queue_delay_us: dynamic batching's queue delay.
        max_queue_size: requests that may wait in a batchable model's queue (0: unbounded).
        queue_timeout_us: longest wait in that queue before Triton refuses the request (0: none).

    """

    def __init__(self, root: Path, *, max_batch_size: int = 64, max_queue_delay_us: int = 100,
                 max_queue_size: int = 0, queue_timeout_us: int = 0) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_batch_size = max_batch_size
        self.max_queue_delay_us = max_queue_delay_us
        self.max_queue_size = max_queue_size
        self.queue_timeout_us = queue_timeout_us

    def model_dir(self, model: str) -> Path:
        """The directory of ``model``, checked to be a direct child of the repository.

        Raises:
            InvalidName: the model name is not allowed.

        """
        path = (self.root / check_model_name(model)).resolve()
        if path.parent != self.root:
            raise InvalidName(f"model directory for {model!r} leaves the repository")  # defence in depth
        return path

    def version_file(self, model: str, version: int) -> Path:
        """``<repo>/<model>/<version>/model.onnx``."""
        if version < 1:
            raise InvalidName(f"version must be 1 or more, not {version}")
        return self.model_dir(model) / str(version) / "model.onnx"

    def has_version(self, model: str, version: int) -> bool:
        """Whether the version's ``model.onnx`` is in place."""
        return self.version_file(model, version).is_file()

    def write_version(self, model: str, version: int, artifact: BinaryIO) -> Path:
        """Copy ``artifact`` to the version's ``model.onnx`` (atomically); return its path."""
        target = self.version_file(model, version)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".model-", suffix=".onnx", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(artifact, out, 1024 * 1024)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(name, 0o444)
            os.replace(name, target)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return target

    def write_preflight(self, model: str, version: int, signature: Signature) -> str:
        """Write the scratch model ``_preflight-<model>`` serving only ``version``; return its name.

        Its ``model.onnx`` is a hard link to the version's file in the repository (a copy where
        links are not possible), so Triton test-loads exactly the bytes the serving model would.
        """
        name = PREFLIGHT_PREFIX + check_model_name(model)
        source = self.version_file(model, version)
        self.remove_preflight(model)
        target = self.root / name / str(version) / "model.onnx"
        target.parent.mkdir(parents=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
        config = render_config(name, signature, versions=[version], max_batch_size=self.max_batch_size,
                               max_queue_delay_us=self.max_queue_delay_us)
        (self.root / name / "config.pbtxt").write_text(config, encoding="utf-8")
        return name

    def remove_preflight(self, model: str) -> None:
        """Remove the scratch model of :meth:`write_preflight` (if any)."""
        shutil.rmtree(self.root / (PREFLIGHT_PREFIX + check_model_name(model)), ignore_errors=True)

    def write_config(self, model: str, signature: Signature, *, versions: Sequence[int]) -> Path:
        """Write ``config.pbtxt`` of ``model`` serving ``versions`` (atomically); return its path."""
        text = render_config(model, signature, versions=versions, max_batch_size=self.max_batch_size,
                             max_queue_delay_us=self.max_queue_delay_us, max_queue_size=self.max_queue_size,
                             queue_timeout_us=self.queue_timeout_us)
        target = self.model_dir(model) / "config.pbtxt"
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".config-", suffix=".pbtxt", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
            os.replace(name, target)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return target


class TritonControl:
    """Triton's HTTP model control API (``--model-control-mode=explicit``).

    Args:
        base_url: Triton's HTTP endpoint, for example ``http://triton:8000``.
        timeout_s: how long a load may take (Triton answers once the model is ready).
        client: an httpx client to use instead of a new one (tests; connection reuse).
        headers: sent with every call; Triton's restricted model-repository API needs its secret
            header (``--http-restricted-api=model-repository:<header>=<secret>``).

    """

    def __init__(self, base_url: str, *, timeout_s: float = 120.0, client: httpx.Client | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = client or httpx.Client(timeout=timeout_s)
        self._owns_client = client is None
        self._headers = headers or {}

    def load(self, model: str) -> None:
        """Load (or reload) ``model`` with its current ``config.pbtxt``.

        Raises:
            TritonError: Triton refused or could not be reached.

        """
        self._post(f"/v2/repository/models/{_triton_name(model)}/load", {})

    def unload(self, model: str) -> None:
        """Unload every version of ``model``.

        Raises:
            TritonError: Triton refused or could not be reached.

        """
        self._post(f"/v2/repository/models/{_triton_name(model)}/unload",
                   {"parameters": {"unload_dependents": False}})

    def index(self, model: str) -> dict[int, tuple[str, str]]:
        """Triton's repository index for ``model``: ``{version: (state, reason)}``.

        ``state`` is Triton's (``READY``, ``UNAVAILABLE``, ``LOADING``...); ``reason`` is why a
        version is not ready (Triton's message when its load failed). Versions Triton never tried
        are absent.

        Raises:
            TritonError: Triton refused or could not be reached.

        """
        name = _triton_name(model)
        response = self._post("/v2/repository/index", {})
        try:
            entries = response.json()
        except ValueError as exc:
            raise TritonError(f"Triton's repository index is not JSON: {response.text[:200]}") from exc
        found: dict[int, tuple[str, str]] = {}
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and entry.get("name") == name and str(entry.get("version", "")).isdigit():
                found[int(entry["version"])] = (str(entry.get("state", "")), str(entry.get("reason", "")))
        return found

    def _post(self, path: str, body: dict[str, object]) -> httpx.Response:
        try:
            response = self._client.post(self.base_url + path, json=body, headers=self._headers)
        except httpx.HTTPError as exc:
            raise TritonError(f"Triton at {self.base_url} could not be reached ({exc}); is it running?") from exc
        if response.status_code != 200:
            detail = response.text[:500]
            if response.status_code == 403 or "restricted" in detail.lower():
                raise TritonError(f"Triton refused POST {path}: its model-repository API is restricted and the "
                                  "registry's REGISTRY_TRITON_ADMIN_HEADER/REGISTRY_TRITON_ADMIN_SECRET do not match "
                                  f"Triton's --http-restricted-api (HTTP {response.status_code}: {detail})")
            raise TritonError(f"Triton refused POST {path}: HTTP {response.status_code} {detail}")
        return response

    def close(self) -> None:
        """Close the HTTP client when this object created it."""
        if self._owns_client:
            self._client.close()


def _triton_name(model: str) -> str:
    """``model`` if it is a registered model's name or its scratch model's (:data:`PREFLIGHT_PREFIX`)."""
    if model.startswith(PREFLIGHT_PREFIX):
        return PREFLIGHT_PREFIX + check_model_name(model[len(PREFLIGHT_PREFIX):])
    return check_model_name(model)
