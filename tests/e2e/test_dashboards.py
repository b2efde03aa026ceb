"""Every panel of the Grafana dashboard returns data from a real Prometheus scraping the real closed loop."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from deploy.localstack import REPO
from tests.e2e.conftest import SERVICES, ClosedLoop

pytestmark = pytest.mark.integration

DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "tributary.json"


def panel_queries() -> list[tuple[str, str]]:
    """``(panel title, expr)`` of every query of every panel of the provisioned dashboard."""
    doc = json.loads(DASHBOARD.read_text())
    panels: list[dict[str, Any]] = []
    for panel in doc["panels"]:
        panels += [panel, *panel.get("panels", [])]
    return [(p["title"], t["expr"]) for p in panels if p.get("type") != "row" for t in p.get("targets", [])]


def test_every_panel_query_returns_data(closed_loop: ClosedLoop) -> None:
    prometheus = closed_loop.prometheus
    queries = panel_queries()
    assert len(queries) >= 20
    deadline = time.monotonic() + 60
    while True:
        up = prometheus.targets_up()
        empty = [(title, expr) for title, expr in queries if not prometheus.query(expr)]
        if not empty and all(up.get(name) for name in SERVICES):
            break
        if time.monotonic() > deadline:
            pytest.fail(f"targets up: {up}\npanel queries without data:\n" +
                        "\n".join(f"  {title}: {expr}" for title, expr in empty), pytrace=False)
        time.sleep(1)
    objective = prometheus.query("max(drift_recovery_objective_seconds)")
    assert float(objective[0]["value"][1]) == 600
    recovery = prometheus.query(f'drift_recovery_seconds{{dataset="{closed_loop.dataset}"}}')
    assert recovery and 0 <= float(recovery[0]["value"][1]) < 600
    lag = prometheus.query(f'tributary_consumer_lag{{group="drift-loop-{closed_loop.dataset.removeprefix("loop")}"}}')
    assert lag, "drift's consumer group reports its lag"
