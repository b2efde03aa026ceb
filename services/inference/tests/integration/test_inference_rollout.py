"""Routing against real Triton, Redis and Kafka: canary share, stickiness, rollout from the topic."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from confluent_kafka import Producer
from inference.service import InferRequest
from inference.settings import Settings
from inference.tensors import Tensor
from schemas.registry import RolloutChangedV1
from tributary_kit.codec import encode_event

from services.inference.tests.integration.conftest import (
    GATEWAY_PRINCIPAL,
    MODEL,
    Gateway,
    Registry,
    set_rollout,
    v2_body,
)
from tests.fixtures.triton import TritonServer

pytestmark = pytest.mark.integration

ROW = np.array([[0.2, 0.4, 0.6, 0.8]], dtype=np.float32)


def _versions_for(g: Gateway, entities: list[str], concurrency: int = 32) -> list[int]:
    async def run() -> list[int]:
        limit = asyncio.Semaphore(concurrency)

        async def one(entity: str) -> int:
            async with limit:
                result = await g.service.infer(InferRequest(model=MODEL, inputs=[Tensor("x", "FP32", ROW)],
                                                            entity=entity))
                return int(result.version)

        return list(await asyncio.gather(*(one(e) for e in entities)))

    return g.run(run(), timeout_s=300)


def test_canary_share_is_within_two_points_of_the_weight_over_10000_requests(gateway: Gateway) -> None:
    set_rollout(gateway, "canary", 2, weight=0.25)
    entities = [f"customer-{i}" for i in range(10_000)]
    versions = _versions_for(gateway, entities)
    share = Counter(versions)[2] / len(versions)
    assert abs(share - 0.25) <= 0.02, share


def test_sticky_per_entity_across_rest_grpc_and_weight_increases(gateway: Gateway) -> None:
    set_rollout(gateway, "canary", 2, weight=0.3)
    entities = [f"sticky-{i}" for i in range(60)]
    first = dict(zip(entities, _versions_for(gateway, entities), strict=True))
    again = dict(zip(entities, _versions_for(gateway, entities), strict=True))
    assert first == again
    assert set(first.values()) == {1, 2}
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    try:
        for entity in entities[:20]:
            rest = httpx.post(f"{gateway.url}/v2/models/{MODEL}/infer", json=v2_body(ROW.tolist()),
                              headers={"x-tributary-entity": entity})
            assert int(rest.headers["x-tributary-model-version"]) == first[entity]
            inp = grpcclient.InferInput("x", [1, 4], "FP32")
            inp.set_data_from_numpy(ROW)
            answer = client.infer(MODEL, [inp], parameters={"entity_id": entity})
            assert int(answer.get_response().model_version) == first[entity]
    finally:
        client.close()
    # Raising the weight keeps every canary caller on the canary.
    set_rollout(gateway, "canary", 2, weight=0.6)
    after = dict(zip(entities, _versions_for(gateway, entities), strict=True))
    assert all(after[e] == 2 for e, v in first.items() if v == 2)


def test_version_changes_take_effect_without_dropping_requests(gateway: Gateway) -> None:
    statuses: Counter[int] = Counter()
    versions: Counter[str] = Counter()
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                r = client.post(f"{gateway.url}/v2/models/{MODEL}/infer", json=v2_body(ROW.tolist()))
                statuses[r.status_code] += 1
                versions[r.headers.get("x-tributary-model-version", "?")] += 1

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        gateway.wait_for(lambda: statuses.total() > 50)
        set_rollout(gateway, "champion", 2)
        gateway.wait_for(lambda: versions["2"] > 50)
        set_rollout(gateway, "champion", 1)
        gateway.wait_for(lambda: versions["1"] > 100)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert set(statuses) == {200}, statuses


def _publish_rollout(bootstrap: str, topic: str, alias: str, version: int | None, weight: float | None = None
                     ) -> None:
    event = RolloutChangedV1(model_name=MODEL, alias=alias, version=version, weight=weight,  # type: ignore[arg-type]
                             changed_by="registry-test", reason="test", changed_at=datetime.now(UTC))
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, encode_event(event, event_id=str(uuid.uuid4()), source="registry",
                                         occurred_at=datetime.now(UTC)), f"{MODEL}/{alias}")
    assert producer.flush(10) == 0


def test_registry_events_route_and_a_new_replica_rebuilds_the_table_from_the_topic(
        served: TritonServer, settings_for: Callable[..., Settings], gateway_factory: Callable[[Settings], Gateway],
        kafka_bootstrap: str, topics: dict[str, str]) -> None:
    first = gateway_factory(settings_for(served))
    _publish_rollout(kafka_bootstrap, topics["rollout"], "champion", 1)
    _publish_rollout(kafka_bootstrap, topics["rollout"], "canary", 2, 0.5)
    first.wait_for(lambda: MODEL in first.service.rollout.table
                   and first.service.rollout.table[MODEL].canary == 2, message="registry events not applied")
    # An operator change goes to Redis and back onto the topic.
    set_rollout(first, "shadow", 4)
    expected = {"champion": 1, "canary": 2, "canary_weight": 0.5, "shadow": 4}
    # A replica with an empty Redis (its own prefix) rebuilds the same table from the topic alone.
    second = gateway_factory(settings_for(served, redis_prefix=f"test-{uuid.uuid4().hex[:8]}:"))
    second.wait_for(lambda: second.app.state.consumers["rollout"].caught_up.is_set())
    second.wait_for(lambda: MODEL in second.service.rollout.table and second.service.rollout.table[MODEL].shadow == 4,
                    message="the new replica did not rebuild the table")
    route = second.service.rollout.table[MODEL]
    assert {"champion": route.champion, "canary": route.canary, "canary_weight": route.canary_weight,
            "shadow": route.shadow} == expected
    r = httpx.post(f"{second.url}/v2/models/{MODEL}/infer", json=v2_body(ROW.tolist()))
    assert r.status_code == 200 and r.headers["x-tributary-model-version"] in {"1", "2"}


def test_stale_events_never_undo_a_newer_change(gateway: Gateway, kafka_bootstrap: str,
                                               topics: dict[str, str]) -> None:
    before = gateway.service.rollout.table[MODEL].revision
    stale = RolloutChangedV1(model_name=MODEL, alias="champion", version=2, changed_by="old", reason="replayed",
                             changed_at=datetime(2020, 1, 1, tzinfo=UTC))
    # After the stale event and a poison record, on the same partition (same key), a current event
    # that changes the revision: once it is applied, the two records before it were handled.
    current = RolloutChangedV1(model_name=MODEL, alias="champion", version=1, changed_by="now", reason="marker",
                               changed_at=datetime.now(UTC))
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for value in (encode_event(stale, event_id=str(uuid.uuid4()), source="registry", occurred_at=datetime.now(UTC)),
                  b"not an envelope",
                  encode_event(current, event_id=str(uuid.uuid4()), source="registry",
                               occurred_at=datetime.now(UTC))):
        producer.produce(topics["rollout"], value, f"{MODEL}/champion")
    assert producer.flush(10) == 0
    gateway.wait_for(lambda: gateway.service.rollout.table[MODEL].revision > before, 60,
                     "the events after the stale one were not applied")
    assert gateway.service.rollout.table[MODEL].champion == 1
    from tests.fixtures.kafka import consume
    consume(kafka_bootstrap, f"{topics['rollout']}.dlq", count=1)  # the poison record was dead-lettered


def test_an_older_record_landing_last_is_followed_by_the_change_redis_holds(gateway: Gateway, kafka_bootstrap: str,
                                                                            topics: dict[str, str]) -> None:
    """The compacted topic keeps the last record per key: when that is older than the alias's change, the
    gateway publishes the change again, so a replica rebuilding from the topic serves it."""
    gateway.wait_for(lambda: gateway.app.state.consumers["rollout"].caught_up.is_set())
    gateway.wait_for(lambda: gateway.service.rollout.live, message="the rollout never went live after its replay")
    held = gateway.service.rollout.table[MODEL]
    stale = RolloutChangedV1(model_name=MODEL, alias="champion", version=2, changed_by="late-registry",
                             reason="published late", changed_at=datetime(2020, 1, 1, tzinfo=UTC))
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topics["rollout"], encode_event(stale, event_id=str(uuid.uuid4()), source="registry",
                                                     occurred_at=datetime.now(UTC)), f"{MODEL}/champion")
    assert producer.flush(10) == 0
    from tests.fixtures.kafka import consume

    def republished(m: Any) -> bool:
        payload = json.loads(m.value())["payload"]
        return (payload["model_name"] == MODEL and payload["alias"] == "champion"
                and payload["reason"].startswith("republished") and payload["version"] == held.champion)

    [record] = consume(kafka_bootstrap, topics["rollout"], count=1, match=republished, timeout_s=60)
    assert record.key() == f"{MODEL}/champion".encode()
    assert gateway.service.rollout.table[MODEL].champion == held.champion == 1


def test_redis_losing_the_table_keeps_the_last_known_routes_and_writes_them_back(
        served: TritonServer, settings_for: Callable[..., Settings], gateway_factory: Callable[[Settings], Gateway]
) -> None:
    g = gateway_factory(settings_for(served))
    set_rollout(g, "champion", 1)
    set_rollout(g, "canary", 2, weight=0.25)
    redis = g.service.rollout._redis                  # the gateway's own client, on its loop
    prefix = g.settings.redis_prefix
    g.run(redis.delete(f"{prefix}rollout:{MODEL}", f"{prefix}rollout:models"))   # a restart without persistence
    g.wait_for(lambda: g.run(redis.hget(f"{prefix}rollout:{MODEL}", "champion")) == b"1", 10,
               "the last known routes written back to Redis")
    route = httpx.get(f"{g.url}/v1/rollout/{MODEL}", timeout=10).json()
    assert (route["champion"], route["canary"], route["canary_weight"]) == (1, 2, 0.25)
    r = httpx.post(f"{g.url}/v2/models/{MODEL}/infer", json=v2_body([[1.0, 2.0, 3.0, 4.0]]), timeout=10)
    assert r.status_code == 200, r.text
    set_rollout(g, "champion", 2)                     # a real change still wins over the written-back copy
    assert httpx.get(f"{g.url}/v1/rollout/{MODEL}", timeout=10).json()["champion"] == 2


def test_with_a_registry_operator_changes_go_through_the_registry(
        served: TritonServer, settings_for: Callable[..., Settings], registry: Registry,
        gateway_factory: Callable[[Settings], Gateway]) -> None:
    g = gateway_factory(settings_for(served, registry_url=registry.url, registry_token=registry.gateway_token))
    answer = set_rollout(g, "champion", 1)
    assert answer["champion"] == 1  # answered once this replica serves the registry's change
    r = httpx.put(f"{g.url}/v1/rollout/{MODEL}", json={"alias": "canary", "version": 2, "weight": 0.3,
                                                       "reason": "try v2"}, headers={"x-operator": "ana"}, timeout=30)
    assert r.status_code == 200 and (r.json()["canary"], r.json()["canary_weight"]) == (2, 0.3), r.text
    change = registry.history("canary")[-1]
    assert (change["version"], change["weight"], change["changed_by"]) == (2, 0.3, GATEWAY_PRINCIPAL)
    assert "try v2" in change["reason"] and "operator ana" in change["reason"]
    # The registry's refusal reaches the operator with its reason.
    r = httpx.put(f"{g.url}/v1/rollout/{MODEL}", json={"alias": "champion", "version": 9, "reason": "typo"},
                  timeout=30)
    assert r.status_code == 404 and "registry refused" in r.json()["error"], r.text
    assert registry.aliases()["champion"]["version"] == 1


def test_with_a_registry_but_no_token_the_gateway_changes_no_alias(
        served: TritonServer, settings_for: Callable[..., Settings], registry: Registry,
        gateway_factory: Callable[[Settings], Gateway]) -> None:
    g = gateway_factory(settings_for(served, registry_url=registry.url))
    r = httpx.put(f"{g.url}/v1/rollout/{MODEL}", json={"alias": "champion", "version": 1, "reason": "test"},
                  timeout=30)
    assert r.status_code == 502 and "INFERENCE_REGISTRY_TOKEN" in r.json()["error"], r.text
    assert MODEL not in g.service.rollout.table and "champion" not in registry.aliases()
