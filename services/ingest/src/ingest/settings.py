"""Configuration of the ingest service, read from ``INGEST_*`` environment variables."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the ingest service; each field is ``INGEST_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="INGEST_", extra="ignore", use_attribute_docstrings=True)

    kafka_bootstrap: str = "127.0.0.1:9092"
    """Comma-separated Kafka bootstrap servers."""

    producer_config: dict[str, Any] = Field(default_factory=dict)
    """Extra librdkafka producer settings (JSON), merged over the durable defaults."""

    delivery_timeout_s: float = Field(default=10.0, gt=0)
    """How long the broker may take to acknowledge a record before the request fails with 503."""

    enqueue_timeout_s: float = Field(default=1.0, ge=0)
    """How long a request waits for room in a full producer queue before it is answered 429."""

    queue_max_messages: int = Field(default=100_000, ge=1)
    """Records the producer may hold unacknowledged; beyond this requests are shed with 429."""

    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    """Largest accepted request body (batch endpoints); larger bodies get 413."""

    max_event_bytes: int = Field(default=1024 * 1024, ge=256)
    """Largest accepted body of a single-event request, and of one raw Kafka record."""

    max_batch_events: int = Field(default=10_000, ge=1)
    """Most events in one batch request; more get 413."""

    retry_after_s: int = Field(default=1, ge=1)
    """Retry-After (seconds) sent with 429 and 503 answers."""

    create_topics: bool = True
    """Create the catalogue's topics at start-up when they are missing."""

    consume_raw: bool = True
    """Validate producers' raw topics into the validated topics (the direct-Kafka path)."""

    raw_group_id: str = "ingest-raw"
    """Consumer group of the raw-topic validator."""

    raw_batch_size: int = Field(default=500, ge=1)
    """Raw records validated and published per round; offsets are committed per round."""

    readiness_timeout_s: float = Field(default=2.0, gt=0)
    """Time the readiness probe gives the broker to answer a metadata request."""

    startup_timeout_s: float = Field(default=30.0, gt=0)
    """Time start-up gives the broker (topics, dataset specs) before the service fails."""

    otlp_endpoint: str | None = None
    """OTLP/HTTP traces endpoint (e.g. http://127.0.0.1:4318/v1/traces); no export when unset."""

    workers: int = Field(default=1, ge=1, le=64)
    """HTTP worker processes, each with its own producer and share of the raw topics; up to one per
    core. Above 1, metrics are collected across workers (``PROMETHEUS_MULTIPROC_DIR``, a fresh
    temporary directory when unset)."""

    host: str = "127.0.0.1"
    """Address the HTTP server binds."""

    port: int = 8001
    """Port the HTTP server binds."""

    log_level: str = "INFO"
    """Root log level."""

    log_json: bool = True
    """JSON log lines (false: plain text for a terminal)."""
