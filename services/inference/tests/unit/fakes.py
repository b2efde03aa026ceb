"""Stand-ins the gateway core's unit tests share (pure units: no Redis, Kafka or Triton)."""

from __future__ import annotations

from typing import Any

from inference.errors import ModelNotFound
from inference.routing import ModelRoute


class FixedRollout:
    """A rollout state serving one fixed route: what :class:`inference.service.InferenceService` reads of it."""

    loaded = True
    redis_error: str | None = None
    refreshed_at: float | None = None

    def __init__(self, route: ModelRoute) -> None:
        self.table = {route.model: route}

    def route(self, model: str) -> ModelRoute:
        if model not in self.table:
            raise ModelNotFound(f"model {model!r} has no rollout")
        return self.table[model]


class NullSink:
    """A prediction publisher that takes every event and keeps none."""

    def offer(self, event: Any) -> bool:
        return True
