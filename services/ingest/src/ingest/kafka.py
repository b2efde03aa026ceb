"""Kafka clients of the ingest service, and raw records turned into rows."""

from __future__ import annotations

import json
from functools import partial

from confluent_kafka import Consumer, Message
from tributary_kit.producer import AsyncProducer

from ingest.service import Row
from ingest.settings import Settings
from ingest.validation import Kind, parse_one_json


def build_producer(settings: Settings) -> AsyncProducer:
    """The idempotent, acks=all producer every request publishes through.

    Delivery reports are served on the event loop: a reporting thread would take the GIL once
    per record from a loop that is busy decoding the next batch.
    """
    config = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "client.id": "ingest",
        "message.timeout.ms": int(settings.delivery_timeout_s * 1000),
        "queue.buffering.max.messages": settings.queue_max_messages,
        **settings.producer_config,
    }
    return AsyncProducer(config, enqueue_timeout_s=settings.enqueue_timeout_s, reports_on_loop=True)


def build_raw_consumer(settings: Settings) -> Consumer:
    """The raw-topic consumer: offsets are committed by hand, only after publishing."""
    return Consumer({
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": settings.raw_group_id,
        "client.id": "ingest-raw",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "max.poll.interval.ms": 300_000,
    })


def row_from_record(msg: Message, kind: Kind, max_bytes: int) -> Row:
    """A row for one raw record; undecodable or oversized records become rows with an error."""
    raw = msg.value() or b""
    key = msg.key()
    key_text = key.decode("utf-8", errors="replace") if isinstance(key, bytes) else key
    where = partial(Row, partition=msg.partition(), offset=msg.offset(), key=key_text)
    if msg.value() is None:
        return where(text=b"", error="record has no value")
    if len(raw) > max_bytes:
        return where(text=raw, error=f"record of {len(raw)} bytes is over the limit of {max_bytes}")
    event = parse_one_json(raw, kind)
    if event is not None:
        return where(event=event, text=raw)
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        return where(text=raw, error=f"record is not valid JSON: {exc}")
    return where(value=value, text=raw)
