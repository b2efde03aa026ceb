"""Dataset specs, read from their compacted topic when a command needs one.

The topic is small (one live record per dataset), so every command reads it from the beginning
to the current end and takes the last record of its dataset: the trainer always trains on the
spec that is current when the command runs, and records its revision with the model.
"""

from __future__ import annotations

import time

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition
from schemas.dataset import DatasetSpecRegisteredV1
from tributary_kit.codec import PoisonMessage

from trainer.errors import BrokerUnavailable, UnknownDataset
from trainer.kafka import build_reader, decode_spec


def load_spec(bootstrap: str, topic: str, dataset: str, *, timeout_s: float = 30.0) -> DatasetSpecRegisteredV1:
    """The current spec of ``dataset``.

    Raises:
        UnknownDataset: no spec is registered under that name (or it was removed).
        BrokerUnavailable: the topic could not be read to its end in time.

    """
    consumer = build_reader(bootstrap, "specs")
    current: DatasetSpecRegisteredV1 | None = None
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=timeout_s).topics[topic].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)[1] for p in partitions}
        pending = {p for p, high in ends.items() if high > 0}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in pending])
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"could not read {topic} to its end within {timeout_s}s")
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            p, offset, err = msg.partition() or 0, msg.offset() or 0, msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(p)
                continue
            key = msg.key()
            name = key.decode() if isinstance(key, bytes) else key
            if name == dataset:
                if msg.value() is None:
                    current = None  # tombstone: the dataset was removed
                else:
                    try:
                        event = decode_spec(msg.value())
                    except PoisonMessage:
                        event = None
                    if event is not None and event.spec.name == dataset:
                        current = event
            if offset + 1 >= ends[p]:
                pending.discard(p)
    except (KafkaException, KeyError) as exc:
        raise BrokerUnavailable(f"could not read dataset specs from {topic}: {exc}") from exc
    finally:
        consumer.close()
    if current is None:
        raise UnknownDataset(f"no spec is registered for dataset {dataset!r}; register it with ingest "
                             "(PUT /v1/datasets/{name}) before retraining")
    return current
