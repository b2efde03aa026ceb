"""Plan K3, the idempotence proof: the broker writes a batch, its answer is lost, ingest's producer sends it again.

Ingest reaches a private broker only through :class:`LossyProxy`, whose external listener
advertises the proxy, so every connection of ingest's producer goes through it. Mid-stream the
proxy loses the broker's answers for a few seconds while passing every request: the broker
writes the produce requests, the producer times them out (2 s) and, once the proxy closes the
out-of-step connections, sends them again. The client sends each batch once (no client
retries), so every duplicate in the log is the producer's own.

Pass: with ingest's producer settings (idempotence on) L = 0 and D_raw = 0, per-key order kept.
The control run turns idempotence off with the same fault and must find duplicates: it shows the
fault does make the producer resend records the broker already wrote, so the first run's
D_raw = 0 is the idempotent producer's work and not a fault that never bit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.localstack import Broker, free_port
from schemas import topics
from tests.fixtures.kafka import start
from tests.reliability.lossy_proxy import LossyProxy
from tests.reliability.processes import (
    FeatureClient,
    check_ledger,
    ingest_process,
    port_of,
    read_topic,
    register_dataset,
    wait_for,
)

pytestmark = pytest.mark.integration

LOSS_S = 6.0
"""How long the broker's answers are lost: three of the producer's 2 s request timeouts."""


@pytest.fixture(scope="module")
def proxied_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, LossyProxy]]:
    """A private broker whose external listener is reached (and advertised) through a lossy proxy."""
    external = free_port()
    proxy = LossyProxy(upstream_port=external).start()
    broker = Broker(tmp_path_factory.mktemp("kafka-lossy"), external_port=external,
                    external_advertised=proxy.address)
    start(broker)
    try:
        yield broker, proxy
    finally:
        proxy.stop()
        broker.stop()


@pytest.mark.parametrize("idempotent", [True, False], ids=["ingest-producer", "control-without-idempotence"])
def test_lost_broker_answers_make_the_producer_resend_and_idempotence_removes_the_duplicates(
        proxied_broker: tuple[Broker, LossyProxy], tmp_path: Path, unique: str, idempotent: bool) -> None:
    broker, proxy = proxied_broker
    dataset = f"lossy-{'idem' if idempotent else 'control'}-{unique}"
    producer: dict[str, int | bool] = {"request.timeout.ms": 2000}
    if not idempotent:
        producer["enable.idempotence"] = False
    ingest = ingest_process(proxy.address, tmp_path, INGEST_DELIVERY_TIMEOUT_S="60",
                            INGEST_PRODUCER_CONFIG=json.dumps(producer))
    ingest.start()
    url = f"http://127.0.0.1:{port_of(ingest)}"
    try:
        register_dataset(url, dataset)
        client = FeatureClient(url, dataset, batch=10, rate_per_s=100, timeout_s=90, resend=False).start(3000)
        wait_for(lambda: client.count() >= 300, "300 acknowledged events before the fault", 60)
        before = proxy.answers_lost
        proxy.lose_answers()
        lost_at = time.monotonic()
        time.sleep(LOSS_S)           # the fault's duration, not a wait for a condition
        proxy.restore()
        restored_at = time.monotonic()
        client.join(240)

        attempts = list(client.attempts)
        statuses = sorted({(a.status, a.error) for a in attempts}, key=str)
        during = [a for a in attempts if lost_at <= a.started < restored_at]
        records = read_topic(broker.bootstrap, topics.FEATURES,
                             match=lambda r: r.value.get("payload", {}).get("dataset") == dataset)
        verdict = check_ledger(client.acked, records, seq_of=lambda p: int(p["features"]["seq"]))
        print(f"idempotent={idempotent} attempts={len(attempts)} sent during the fault={len(during)} "
              f"statuses={statuses} request bytes that reached the broker while answers were lost="
              f"{proxy.requests_while_losing} answer bytes lost={proxy.answers_lost - before} "
              f"acked={verdict.acked} observed={verdict.observed} records={len(records)} "
              f"D_raw={verdict.raw_duplicates} lost={len(verdict.lost)}")
        # The request whose answer is lost may have left just before the fault began: what must
        # happen is that answers were lost (the control run shows that makes the producer resend).
        assert proxy.answers_lost > before, "no answer of the broker was lost"
        assert all(a.status == 200 for a in attempts), statuses     # the fault ends well inside the timeouts
        assert verdict.acked == 3000
        assert verdict.lost == set()
        if idempotent:
            assert verdict.raw_duplicates == 0
            assert verdict.order_violations == []
        else:
            assert verdict.raw_duplicates > 0, "the fault did not make the producer resend a written record"
    finally:
        ingest.stop()
