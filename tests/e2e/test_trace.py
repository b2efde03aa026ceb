"""One trace follows a feature event across the services' Kafka hops.

The event that closes a drifted window enters ingest with the test's ``traceparent``; its trace
goes on through ingest's publish, drift's consumer span (the report and retrain command it
publishes continue the trace of the event that closed their window), the trainer's command
span, the registry's HTTP spans (the trainer sends its trace context) and the events the
registry publishes, and the gateway's rollout consumer span. Spans come from each process's
OTLP/HTTP exporter to a receiver in the test.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import ClosedLoop, Span

pytestmark = pytest.mark.integration

EXPECTED = {
    "ingest": lambda s: True,
    "drift": lambda s: s.name == "drift.consume ingest.feature-event.v1",
    "trainer": lambda s: s.name == "trainer.command",
    "registry": lambda s: "versions" in s.name,
    "inference": lambda s: s.name == "inference.consume registry.rollout-changed.v1",
}


def test_one_trace_spans_ingest_drift_trainer_registry_and_inference(closed_loop: ClosedLoop) -> None:
    trace_id = closed_loop.trace_id
    deadline = time.monotonic() + 60
    while True:
        spans = closed_loop.otlp.of_trace(trace_id)
        found = {service: [s for s in spans if s.service == service and match(s)] for service, match in
                 EXPECTED.items()}
        if all(found.values()):
            break
        if time.monotonic() > deadline:
            seen = sorted({(s.service, s.name) for s in spans})
            pytest.fail(f"trace {trace_id}: missing {[k for k, v in found.items() if not v]}; spans of the trace: "
                        f"{seen}", pytrace=False)
        time.sleep(0.5)
    hops: list[Span] = [found[service][0] for service in EXPECTED]
    assert all(s.trace_id == trace_id for s in hops[:-1])
    # The gateway handles the rollout topic in batches: the batch span continues the first record's
    # trace and links the others, so this trace is its own or one of its links.
    assert hops[-1].trace_id == trace_id or trace_id in hops[-1].links
    # Each consumer span has a parent: it continued the trace rather than starting one.
    assert all(s.parent_span_id for s in hops)
    # Drift's retrain command reached the trainer inside the same trace, and the trainer's run
    # reached the registry's registration endpoint.
    names = {(s.service, s.name) for s in closed_loop.otlp.of_trace(trace_id)}
    assert ("trainer", "trainer.run") in names
