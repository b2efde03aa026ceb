"""What the gateway runs model versions on.

Triton (:mod:`inference.triton`), onnxruntime (:mod:`inference.fallback`), or Triton behind the
coalescer (:mod:`inference.coalesce`).
"""

from __future__ import annotations

from typing import Protocol

from inference.tensors import Signature, Tensor


class Backend(Protocol):
    """Runs model versions: Triton, onnxruntime, or the coalescer in front of Triton."""

    name: str

    async def infer(self, model: str, version: int, inputs: list[Tensor], outputs: list[str] | None, *,
                    timeout_s: float, request_id: str = "") -> list[Tensor]:
        """Run one version on ``inputs``."""
        ...

    async def signature(self, model: str, version: int) -> Signature:
        """Inputs and outputs of one version."""
        ...

    async def ready(self) -> bool:
        """Whether the backend serves."""
        ...

    async def model_ready(self, model: str, version: int) -> bool:
        """Whether one version is ready."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
