"""The online feature store: each entity's latest feature values in Redis, with a time to live.

One hash per dataset and entity (``<prefix>features:<dataset>:<entity>``) holds each feature's
latest value (JSON, so numbers stay numbers and categories stay strings) and ``__t``, the event
time of the newest event applied. A Lua script applies an event only when it is not older than
``__t``, so redelivered or reordered events never roll a value back, and refreshes the TTL.
A prediction reads the whole hash in one round trip (``HGETALL``).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError
from schemas.envelope import Envelope
from schemas.ingest import FeatureEventV1

from inference import metrics

log = logging.getLogger(__name__)

_TIME = "__t"

# KEYS: the entity's hash. ARGV: event time (µs), TTL (ms), then field/value pairs.
_WRITE = """
local current = redis.call('HGET', KEYS[1], '__t')
if current and tonumber(current) > tonumber(ARGV[1]) then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], '__t', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


class OnlineStore:
    """Latest feature values per entity.

    Args:
        redis: the shared Redis.
        prefix: key prefix.
        ttl_s: how long an entity's values live after its last update.

    """

    def __init__(self, redis: Redis, *, prefix: str, ttl_s: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl_ms = ttl_s * 1000
        self._write = redis.register_script(_WRITE)

    def key(self, dataset: str, entity: str) -> str:
        """The Redis key of one entity's features."""
        return f"{self._prefix}features:{dataset}:{entity}"

    async def read(self, dataset: str, entity: str) -> dict[str, Any] | None:
        """The entity's latest features (one round trip); None when Redis is unreachable.

        An unreachable store degrades the request to the features it carries (counted as
        ``inference_feature_reads_total{outcome="error"}``) instead of failing it.
        """
        try:
            row: dict[Any, Any] = await self._redis.hgetall(self.key(dataset, entity))
        except (RedisError, OSError) as exc:
            metrics.FEATURE_READS.labels("error").inc()
            log.warning("online store unreachable", extra={"error": str(exc)})
            return None
        metrics.FEATURE_READS.labels("hit" if row else "miss").inc()
        return {_text(k): orjson.loads(v) for k, v in row.items() if _text(k) != _TIME}

    async def write(self, events: list[FeatureEventV1]) -> int:
        """Apply ``events`` (one pipelined round trip); how many were newer than what was stored.

        Raises:
            RedisError: Redis did not answer (the consumer retries the batch).

        """
        async with self._redis.pipeline(transaction=False) as pipe:
            for e in events:
                args: list[Any] = [int(e.event_time.timestamp() * 1_000_000), self._ttl_ms]
                for name, value in e.features.items():
                    args += [name, orjson.dumps(value)]
                await self._write(keys=[self.key(e.dataset, e.entity_id)], args=args, client=pipe)
            results = await pipe.execute()
        written = sum(int(r) for r in results)
        metrics.FEATURE_WRITES.labels("written").inc(written)
        metrics.FEATURE_WRITES.labels("stale").inc(len(events) - written)
        return written

    async def on_events(self, envelopes: list[Envelope[FeatureEventV1]]) -> None:
        """Consumer handler: apply a batch of feature events."""
        await self.write([e.payload for e in envelopes])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
