"""The ledger's start-up on a fresh cluster: topics created a moment ago have no leader yet."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from trainer.errors import BrokerUnavailable
from trainer.ledger import KafkaLedger


class Partitions:
    def __init__(self) -> None:
        self.partitions = {0: None}


class Metadata:
    def __init__(self, topic: str) -> None:
        self.topics = {topic: Partitions()}


class FreshTopics:
    """A consumer whose broker answers "not leader" ``refusals`` times, then empty partitions."""

    def __init__(self, refusals: int, code: int = KafkaError.NOT_LEADER_FOR_PARTITION) -> None:
        self.refusals = refusals
        self.code = code
        self.watermark_calls = 0
        self.assigned: list[Any] = []

    def list_topics(self, topic: str, timeout: float) -> Metadata:
        return Metadata(topic)

    def get_watermark_offsets(self, tp: Any, timeout: float) -> tuple[int, int]:
        self.watermark_calls += 1
        if self.refusals > 0:
            self.refusals -= 1
            raise KafkaException(KafkaError(self.code))
        return 0, 0

    def assign(self, partitions: list[Any]) -> None:
        self.assigned = partitions

    def poll(self, timeout: float) -> None:
        return None

    def close(self) -> None:
        pass


def ledger_with(consumer: FreshTopics, monkeypatch: pytest.MonkeyPatch) -> KafkaLedger:
    monkeypatch.setattr("trainer.ledger.build_reader", lambda bootstrap, purpose: consumer)
    return KafkaLedger("127.0.0.1:9", completed_topic="completed", failed_topic="failed")


def test_not_leader_answers_right_after_topic_creation_are_retried_until_the_leaders_exist(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # found by the K9 (a) reliability test: on a fresh broker the trainer exited at start-up with
    # "Broker: Not leader for partition" for the outcome topics its own lifespan had just created
    consumer = FreshTopics(refusals=3)
    ledger = ledger_with(consumer, monkeypatch)
    try:
        ledger.load(timeout_s=30)
        assert consumer.watermark_calls == 3 + 2          # three refusals, then both topics read
        assert len(consumer.assigned) == 2 and len(ledger) == 0
    finally:
        ledger.close()


def test_a_leader_that_never_comes_fails_the_start_up_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = ledger_with(FreshTopics(refusals=10**6), monkeypatch)
    try:
        with pytest.raises(BrokerUnavailable, match=r"Not leader|NOT_LEADER"):
            ledger.load(timeout_s=0.5)
    finally:
        ledger.close()


def test_other_broker_errors_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    consumer = FreshTopics(refusals=1, code=KafkaError.TOPIC_AUTHORIZATION_FAILED)
    ledger = ledger_with(consumer, monkeypatch)
    try:
        with pytest.raises(BrokerUnavailable):
            ledger.load(timeout_s=30)
        assert consumer.watermark_calls == 1
    finally:
        ledger.close()
