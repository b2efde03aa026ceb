"""Readiness of the drift service reflects a stream that stopped, not only a process that lives."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from drift.api import readyz


class _Event:
    def __init__(self, done: bool) -> None:
        self._done = done

    def is_set(self) -> bool:
        return self._done


def _request(*, agent_crashed: bool = False, consumer_crashed: bool = False, recovered: bool = True) -> Any:
    faust = SimpleNamespace(
        started=True, rebalancing=False, crashed=False,
        consumer=SimpleNamespace(crashed=consumer_crashed),
        agents={"drift.stream.features": SimpleNamespace(crashed=agent_crashed)},
        tables=SimpleNamespace(recovery=SimpleNamespace(completed=_Event(recovered))),
    )
    return SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(faust=faust)))


@pytest.mark.parametrize(
    ("kwargs", "status", "body"),
    [
        ({}, 200, {"status": "ready"}),
        ({"recovered": False}, 503, {"status": "starting"}),
        ({"agent_crashed": True}, 503,
         {"status": "crashed", "reason": "stopped consuming: agent drift.stream.features crashed"}),
        ({"consumer_crashed": True}, 503, {"status": "crashed", "reason": "stopped consuming: consumer crashed"}),
    ],
)
async def test_drift_readiness(kwargs: dict[str, bool], status: int, body: dict[str, str]) -> None:
    response = await readyz(_request(**kwargs))
    assert response.status_code == status
    assert json.loads(response.body) == body
