"""The inference gateway killed with ``SIGKILL`` in the middle of a stream of asynchronous requests
over Kafka (issue 4c), then restarted as a new process.

Setup: a gateway process (``python -m inference``) in front of the session's Triton and Redis, with
topics of its own for requests, responses, predictions and rollout changes; ``credit`` v1 is the
champion and v2 the canary at weight 0.5, so the route depends on the entity. A client publishes
N requests (unique request ids, 40 entities, each request's input row its own) at a steady rate.

Fault: once a third of the requests have a response, the test watches the gateway's committed
offsets of the request topic and kills the gateway (``SIGKILL``) as soon as it sees a new commit,
then starts it again; the client goes on publishing while it is down. Right after the kill it
reads the group's committed offsets and the end offsets of the prediction topic. Prediction
events linger ``PREDICTION_LINGER_MS`` (500 ms) before they are sent, so a kill that soon after a
commit falls while events of requests in that commit would still be on their way if the offset
did not wait for them: a gateway that stored offsets before its prediction events were
acknowledged lost some for good in every run of this test (checked by running it against that
ordering).

Pass criteria:
- none lost: every request id has a response (after dedup by request id), and no response
  names a request that was not sent;
- every response is a success (status 200) from v1 or v2 on the route that serves that version,
  with the output that version computes for the request's row (numpy reference);
- duplicates in the response topic (requests answered again after the restart, at least once) are
  reported, and every duplicate is identical to the first answer (version, route, status, outputs);
- routing is sticky by entity, as REST: all answers of one entity carry one version, the one a
  REST call with that entity gets from the restarted gateway;
- no prediction event lost (L = 0): a ``PredictionEventV1`` exists for every request id, with the
  version and route of its answer (duplicates reported, and a request's events for one version and
  route all carry one event id, so consumers deduplicate them);
- in particular for the requests whose offsets were committed at the kill, which are never
  redelivered: each one's prediction event was already on the broker at the kill (below the
  prediction topic's end offsets read right after it), because the gateway stores a request's
  offset only after the broker acknowledged its answer and its prediction event. At least one
  request is in that set (the kill waits for a commit), so the check is never vacuous;
- the gateway comes back ready (``/readyz`` 200) and the kill fell mid-stream (responses missing
  at the kill).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from schemas.inference import InferenceRequestedV1, TensorValue
from tributary_kit.codec import encode_event

from deploy.localstack import ServiceProcess, free_port
from services.inference.tests.integration.conftest import MODEL, make_topics, v2_body
from services.inference.tests.onnx_models import all_versions, reference, write_registry_model
from tests.fixtures.kafka import end_offsets
from tests.fixtures.triton import TritonServer, add_model
from tests.reliability.processes import Record, kill9, read_topic, restart, wait_for

pytestmark = pytest.mark.integration

N = 900
RATE_PER_S = 60.0
ENTITIES = 40
PREDICTION_LINGER_MS = 500


def row_of(i: int) -> list[float]:
    """The input row of request ``i`` (distinct rows, so a misplaced answer shows)."""
    return [float(i % 13), float(i % 7) / 2, 1.0, -float(i % 5)]


class RequestStream:
    """Publishes the N requests at ``RATE_PER_S`` in a thread; ``sent`` counts the acknowledged ones."""

    def __init__(self, bootstrap: str, topic: str, run: str) -> None:
        self.topic, self.run = topic, run
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
        self.sent = 0
        self.failed: list[str] = []
        self.thread = threading.Thread(target=self._send, name="request-stream", daemon=True)

    def request_id(self, i: int) -> str:
        return f"{self.run}-r{i}"

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is None:
            self.sent += 1
        else:
            self.failed.append(str(err))

    def _send(self) -> None:
        began = time.monotonic()
        for i in range(N):
            ahead = began + i / RATE_PER_S - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)  # pacing: the offered rate, not a wait for a condition
            entity = f"e{i % ENTITIES}"
            request = InferenceRequestedV1(
                request_id=self.request_id(i), model_name=MODEL, entity_id=entity, requested_at=datetime.now(UTC),
                inputs=[TensorValue(name="x", datatype="FP32", shape=[1, 4], data=row_of(i))])
            self.producer.produce(self.topic, encode_event(request, event_id=str(uuid.uuid4()), source="test",
                                                           occurred_at=datetime.now(UTC)), entity,
                                  on_delivery=self._delivered)
            self.producer.poll(0)
        self.producer.flush(30)


class Tail:
    """Follows a topic from the beginning in a thread and counts the distinct request ids seen."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"tail-{uuid.uuid4()}",
                                  "enable.auto.commit": False, "isolation.level": "read_committed"})
        partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        self.ids: set[str] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._follow, name=f"tail-{topic}", daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        try:
            while not self.stop.is_set():
                msg = self.consumer.poll(0.2)
                if msg is None or msg.error() is not None:
                    continue
                self.ids.add(json.loads(msg.value() or b"{}")["payload"]["request_id"])
        finally:
            self.consumer.close()

    def count(self) -> int:
        return len(self.ids)


class Commits:
    """Reads what a consumer group committed on every partition of a topic (without joining it)."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
        partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.partitions = [TopicPartition(topic, p) for p in partitions]

    def offsets(self) -> dict[int, int]:
        """Committed offset by partition (-1001: none yet)."""
        return {tp.partition: tp.offset for tp in self.consumer.committed(self.partitions, timeout=10)}

    def total(self) -> int:
        return sum(max(o, 0) for o in self.offsets().values())


def first_and_duplicates(records: list[Record]) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """The first payload per request id (by partition, offset) and every later one."""
    first: dict[str, dict[str, Any]] = {}
    again: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        payload = r.value["payload"]
        if payload["request_id"] in first:
            again[payload["request_id"]].append(payload)
        else:
            first[payload["request_id"]] = payload
    return first, again


def answer_of(payload: dict[str, Any]) -> tuple[Any, ...]:
    """What must be identical between two answers to one request (not the latency or the time)."""
    return (payload["model_version"], payload["route"], payload["status"], payload["entity_id"], payload["error"],
            [(o["name"], o["datatype"], o["shape"], o["data"]) for o in payload["outputs"]])


def test_gateway_killed_mid_stream_on_the_kafka_path_answers_every_request(
        triton: TritonServer, redis_url: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    started = time.monotonic()
    repo = tmp_path / "repo"
    write_registry_model(repo, MODEL, all_versions())
    add_model(triton, repo, MODEL)
    run = uuid.uuid4().hex[:8]
    names = {k: f"test.gwkill.{k}.{run}" for k in ("rollout", "requests", "responses", "predictions")}
    make_topics(kafka_bootstrap, *names.values())
    port = free_port()
    env = {"INFERENCE_TRITON_GRPC_URL": triton.grpc_url, "INFERENCE_REDIS_URL": redis_url,
           "INFERENCE_KAFKA_BOOTSTRAP": kafka_bootstrap, "INFERENCE_PORT": str(port),
           "INFERENCE_GRPC_PORT": str(free_port()), "INFERENCE_REDIS_PREFIX": f"gwkill-{run}:",
           "INFERENCE_GROUP_SUFFIX": f"-gwkill-{run}", "INFERENCE_ROLLOUT_TOPIC": names["rollout"],
           "INFERENCE_REQUEST_TOPIC": names["requests"], "INFERENCE_RESPONSE_TOPIC": names["responses"],
           "INFERENCE_PREDICTIONS_TOPIC": names["predictions"], "INFERENCE_CONSUME_REQUESTS": "true",
           "INFERENCE_CANARY_ANALYSIS": "false", "INFERENCE_CONSUME_FEATURES": "false",
           "INFERENCE_JOIN_LABELS": "false", "INFERENCE_ROLLOUT_REFRESH_S": "0.1", "INFERENCE_LOG_JSON": "false",
           "INFERENCE_MODEL_REPOSITORY": str(repo), "INFERENCE_BACKEND_TIMEOUT_S": "5",
           "INFERENCE_PREDICTION_LINGER_MS": str(PREDICTION_LINGER_MS)}
    url = f"http://127.0.0.1:{port}"
    gateway = ServiceProcess("inference", "inference", env, ready_url=f"{url}/readyz",
                             log_path=tmp_path / "inference.log")
    gateway.start()
    tail: Tail | None = None
    try:
        for body in ({"alias": "champion", "version": 1, "reason": "test"},
                     {"alias": "canary", "version": 2, "weight": 0.5, "reason": "test"}):
            r = httpx.put(f"{url}/v1/rollout/{MODEL}", json=body, timeout=10)
            assert r.status_code == 200, r.text
        tail = Tail(kafka_bootstrap, names["responses"])
        stream = RequestStream(kafka_bootstrap, names["requests"], run)
        stream.thread.start()

        wait_for(lambda: tail.count() >= N // 3 if tail else None, lambda: f"{N // 3} responses before the fault "
                 f"({tail.count() if tail else 0} so far; gateway log:\n{gateway.tail()})", 120)
        commits = Commits(kafka_bootstrap, f"inference-requests-gwkill-{run}", names["requests"])
        before = commits.total()
        wait_for(lambda: commits.total() > before, "a new commit of the request topic before the fault", 60,
                 every_s=0.02)
        seen_commit_at = time.monotonic()
        kill9(gateway)
        killed_at = time.monotonic()
        answered_at_kill, sent_at_kill = tail.count(), stream.sent
        committed_at_kill = commits.offsets()
        commits.consumer.close()
        predictions_at_kill = end_offsets(kafka_bootstrap, names["predictions"])
        restart(gateway)
        ready_at = time.monotonic()
        back = wait_for(lambda: tail.count() > answered_at_kill and time.monotonic(),
                        "a new response after the restart", 120)
        stream.thread.join(60)
        assert not stream.thread.is_alive() and stream.failed == [] and stream.sent == N, (stream.sent, stream.failed)
        wait_for(lambda: tail.count() >= N if tail else None,
                 lambda: f"responses to all {N} requests ({tail.count() if tail else 0}; gateway log:\n"
                         f"{gateway.tail()})", 120, every_s=0.5)
        all_answered = time.monotonic()
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        rest = {}
        for e in range(ENTITIES):   # the routing a REST caller gets for each entity, from the restarted gateway
            r = httpx.post(f"{url}/v2/models/{MODEL}/infer", json=v2_body([row_of(0)]),
                           headers={"x-tributary-entity": f"e{e}"}, timeout=10)
            assert r.status_code == 200, r.text
            rest[f"e{e}"] = int(r.headers["x-tributary-model-version"])
    finally:
        if tail is not None:
            tail.stop.set()
            tail.thread.join(10)
        gateway.stop()

    sent_ids = {stream.request_id(i) for i in range(N)}
    responses = read_topic(kafka_bootstrap, names["responses"])
    first, again = first_and_duplicates(responses)
    assert set(first) - sent_ids == set(), "answers to requests never sent"
    lost = sent_ids - set(first)
    assert lost == set(), f"{len(lost)} requests never answered: {sorted(lost)[:10]}"
    assert answered_at_kill < N, "the kill came after the stream was answered"

    route_of = {1: "champion", 2: "canary"}
    for i in range(N):
        a = first[stream.request_id(i)]
        assert a["status"] == 200 and a["error"] is None, a
        assert a["model_version"] in route_of and a["route"] == route_of[a["model_version"]], a
        np.testing.assert_allclose(a["outputs"][0]["data"],
                                   reference(a["model_version"], np.array([row_of(i)])).reshape(-1), rtol=1e-5)
    differing = {rid: [answer_of(p) for p in ps] for rid, ps in again.items()
                 if any(answer_of(p) != answer_of(first[rid]) for p in ps)}
    assert differing == {}, f"duplicate answers that differ from the first: {differing}"

    versions_by_entity: dict[str, set[int]] = defaultdict(set)
    for a in first.values():
        versions_by_entity[a["entity_id"]].add(a["model_version"])
    assert {e: v for e, v in versions_by_entity.items() if v != {rest[e]}} == {}, (versions_by_entity, rest)
    assert set(rest.values()) == {1, 2}, rest   # weight 0.5 over 40 entities: both routes serve

    predictions = read_topic(kafka_bootstrap, names["predictions"],
                             match=lambda r: r.value.get("payload", {}).get("request_id") in sent_ids)
    events, events_again = first_and_duplicates(predictions)

    # The requests the group had committed at the kill are never redelivered: their prediction
    # events must have been on the broker before the kill.
    requests = read_topic(kafka_bootstrap, names["requests"])
    done_at_kill = {r.value["payload"]["request_id"] for r in requests
                    if r.offset < committed_at_kill.get(r.partition, -1)}
    published_at_kill = {r.value["payload"]["request_id"] for r in predictions
                         if r.offset < predictions_at_kill.get(r.partition, 0)}
    assert done_at_kill, f"no request committed at the kill (committed offsets {committed_at_kill})"
    lost_for_good = done_at_kill - published_at_kill
    assert lost_for_good == set(), (f"{len(lost_for_good)} of the {len(done_at_kill)} requests committed at the "
                                    f"kill had no prediction event on the broker then: {sorted(lost_for_good)[:10]}")
    missing = sent_ids - set(events)
    assert missing == set(), f"{len(missing)} requests without a prediction event: {sorted(missing)[:10]}"
    mismatched = [rid for rid, p in events.items()
                  if (p["model_version"], p["route"]) != (first[rid]["model_version"], first[rid]["route"])]
    assert mismatched == [], mismatched[:10]
    event_ids: dict[tuple[str, int, str], set[str]] = defaultdict(set)
    for r in predictions:
        p = r.value["payload"]
        event_ids[(p["request_id"], p["model_version"], p["route"])].add(r.value["event_id"])
    assert {k: v for k, v in event_ids.items() if len(v) > 1} == {}, "one prediction published under several ids"

    raw_duplicates = len(responses) - len(first)
    print(f"N={N}: {answered_at_kill} answered and {sent_at_kill} sent at the kill; ready again "
          f"{ready_at - killed_at:.1f}s after it, first new answer {back - killed_at:.1f}s after it, all answered "
          f"{all_answered - killed_at:.1f}s after it; response duplicates {raw_duplicates} "
          f"({len(again)} request ids, all identical); killed {killed_at - seen_commit_at:.2f}s after a commit was "
          f"seen, {len(done_at_kill)} requests committed then, every one's prediction event published before the "
          f"kill; prediction event duplicates "
          f"{sum(len(v) for v in events_again.values())}; routes {Counter(a['route'] for a in first.values())}; "
          f"test {time.monotonic() - started:.1f}s")
