"""Consumer lag of a service's own consumer groups, as a Prometheus gauge.

Each consuming service runs one :class:`LagReporter` for the groups it owns: every
``interval_s`` it asks the broker for the group's committed offset and the end offset of every
partition of the group's topics and sets ``tributary_consumer_lag{group,topic,partition}`` to
their difference (the end minus the earliest retained offset when the group committed nothing
yet: everything retained is still to be read).

Why in each service rather than in one exporter: the service is the one that knows its groups
(several are derived from settings or per replica), and no extra process has to be deployed.
The price is that the lag of a service that is down is not exported; alert on ``up == 0`` for
that (deploy/prometheus/rules.yml).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Mapping, Sequence

from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client import Gauge

log = logging.getLogger(__name__)

CONSUMER_LAG = Gauge(
    "tributary_consumer_lag",
    "Records of a partition not yet committed by a consumer group (end offset minus committed offset).",
    ["group", "topic", "partition"],
    multiprocess_mode="livemax",  # several worker processes of one service report the same lag
)


class LagReporter:
    """Measures the lag of ``groups`` (group id -> topics it reads) every ``interval_s``.

    The consumers it uses never join their group (no subscribe): they only read the group's
    committed offsets, so measuring never triggers a rebalance.
    """

    def __init__(self, bootstrap: str, groups: Mapping[str, Sequence[str]], *, interval_s: float = 10.0,
                 timeout_s: float = 5.0) -> None:
        self._bootstrap = bootstrap
        self._groups = {g: list(t) for g, t in groups.items()}
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._clients: dict[str, Consumer] = {}
        self._lock = threading.Lock()
        self._closed = False

    def _client(self, group: str) -> Consumer:
        client = self._clients.get(group)
        if client is None:
            client = self._clients[group] = Consumer({
                "bootstrap.servers": self._bootstrap, "group.id": group, "enable.auto.commit": False,
                "client.id": f"lag-{group}"[:200]})
        return client

    def measure(self) -> dict[tuple[str, str, int], int]:
        """Lag of every partition of every group's topics (also set on the gauge)."""
        lags: dict[tuple[str, str, int], int] = {}
        with self._lock:
            if self._closed:
                return lags
            for group, topics in self._groups.items():
                client = self._client(group)
                partitions: list[TopicPartition] = []
                for topic in topics:
                    meta = client.list_topics(topic, timeout=self._timeout_s).topics.get(topic)
                    if meta is None or meta.error is not None:
                        continue
                    partitions += [TopicPartition(topic, p) for p in sorted(meta.partitions)]
                if not partitions:
                    continue
                committed = client.committed(partitions, timeout=self._timeout_s)
                for tp in committed:
                    low, high = client.get_watermark_offsets(TopicPartition(tp.topic, tp.partition),
                                                             timeout=self._timeout_s, cached=False)
                    lag = max(0, high - (tp.offset if tp.offset >= 0 else low))
                    lags[(group, tp.topic, tp.partition)] = lag
                    CONSUMER_LAG.labels(group, tp.topic, str(tp.partition)).set(lag)
        return lags

    async def run(self) -> None:
        """Measure now and every ``interval_s`` until cancelled; broker trouble is logged and retried."""
        while True:
            try:
                await asyncio.to_thread(self.measure)
            except KafkaException as exc:
                log.warning("consumer lag not measured", extra={"error": str(exc)})
            await asyncio.sleep(self._interval_s)

    def close(self) -> None:
        """Close the broker clients (waits for a measurement in progress)."""
        with self._lock:
            self._closed = True
            for client in self._clients.values():
                with contextlib.suppress(Exception):
                    client.close()
            self._clients.clear()


@contextlib.asynccontextmanager
async def reporting_lag(bootstrap: str, groups: Mapping[str, Sequence[str]], *,
                        interval_s: float = 10.0) -> AsyncIterator[LagReporter]:
    """Run a :class:`LagReporter` in the background for the duration of the block (a lifespan's)."""
    reporter = LagReporter(bootstrap, groups, interval_s=interval_s)
    task = asyncio.create_task(reporter.run(), name="consumer-lag")
    try:
        yield reporter
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await asyncio.to_thread(reporter.close)
