"""The registry's settings: every knob, documented, read from ``REGISTRY_*`` variables.

Only ``__main__`` and the CLI read the environment (``Settings()``); tests build
``Settings(...)`` directly.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from registry.db import normalise_url
from schemas import topics


class Settings(BaseSettings):
    """Configuration of one registry process."""

    model_config = SettingsConfigDict(env_prefix="REGISTRY_", extra="ignore")

    data_dir: Path = Path("var/registry")
    """Directory for the defaults below: the SQLite file, the artifact store, the Triton repository."""

    database_url: str = ""
    """SQLAlchemy URL of the registry database; ``postgresql://...`` uses psycopg 3.
    Empty means the SQLite file ``<data_dir>/registry.db``."""

    migrate_on_start: bool = True
    """Apply Alembic migrations at start-up (``alembic upgrade head``)."""

    artifact_dir: Path | None = None
    """Root of the content-addressed artifact store; default ``<data_dir>/artifacts``."""

    stale_upload_s: float = Field(default=3600.0, ge=0)
    """At start-up, staged uploads older than this (left by a killed process) are deleted, and so
    are stored artifacts no version refers to (a process killed between storing the file and
    committing its version).

    Replicas may share the store, so a younger file may be another replica's upload in progress
    and is kept."""

    max_artifact_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    """Largest model file accepted, in bytes; larger uploads are refused with 413."""

    max_metadata_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """Largest metadata part of an upload (signature, metrics, reference statistics), in bytes."""

    min_opset: int = Field(default=13, ge=1)
    """Lowest ONNX default-domain opset accepted."""

    max_opset: int = Field(default=21, ge=1)
    """Highest ONNX default-domain opset accepted (what the serving onnxruntime supports)."""

    triton_repository: Path | None = None
    """Triton model repository the registry writes; default ``<data_dir>/triton``."""

    triton_url: str | None = None
    """Triton's HTTP endpoint (``http://host:8000``); when set, alias moves load and unload models there."""

    validation_sandbox: bool = True
    """Validate uploaded ONNX in a child process with memory, CPU and time limits (false: in-process)."""

    validation_memory_mb: int = Field(default=2048, ge=512)
    """Address space of the validation process; a model needing more is refused."""

    validation_cpu_s: int = Field(default=60, ge=1)
    """CPU seconds the validation process may use."""

    validation_timeout_s: float = Field(default=120.0, gt=0)
    """Wall-clock time validation may take."""

    signing_keys_dir: Path | None = None
    """Directory of trusted Ed25519 public keys (``<key id>.pub``, PEM) that may sign artifacts."""

    require_signature: bool = False
    """Accept only uploads signed with one of the trusted keys (422 otherwise)."""

    triton_admin_header: str = "triton-admin"
    """Header carrying the secret of Triton's restricted model-repository API
    (``--http-restricted-api=model-repository:<header>=<secret>``)."""

    triton_admin_secret: SecretStr | None = None
    """That secret; sent with every load and unload when set."""

    triton_timeout_s: float = Field(default=120.0, gt=0)
    """How long a Triton load or unload may take."""

    triton_preflight: bool = True
    """Before an alias move reloads a serving model with a version new to it, test-load that version
    alone in Triton (model ``_preflight-<model>``, unloaded right after). Triton reloads every version
    of a model when its config changes, and requests to the serving versions wait during a reload;
    with the test load, a version Triton refuses never causes that reload. Costs one extra load per
    such move."""

    triton_max_batch_size: int = Field(default=64, ge=0)
    """``max_batch_size`` written for models whose tensors all have a dynamic batch dimension."""

    triton_max_queue_delay_us: int = Field(default=100, ge=0)
    """Dynamic batching's ``max_queue_delay_microseconds``."""

    triton_max_queue_size: int = Field(default=0, ge=0)
    """Requests that may wait in a batchable model's queue in Triton (0: unbounded, Triton's
    default); beyond it Triton refuses at once and the gateway answers 429, so overload is shed
    instead of queued (docker-compose sets 256)."""

    triton_queue_timeout_us: int = Field(default=0, ge=0)
    """Longest wait in that queue before Triton refuses the request (0: no limit)."""

    kafka_bootstrap: str = "localhost:9092"
    """Comma-separated Kafka bootstrap servers."""

    model_registered_topic: str = topics.MODEL_REGISTERED
    """Topic of ``registry.model-registered.v1`` events."""

    rollout_changed_topic: str = topics.ROLLOUT_CHANGED
    """Topic of ``registry.rollout-changed.v1`` events (compacted, keyed ``<model>/<alias>``)."""

    create_topics: bool = True
    """Create the two topics from the catalogue at start-up when they are missing."""

    outbox_poll_interval_s: float = Field(default=1.0, gt=0)
    """How often the outbox drainer looks for unpublished events it was not told about."""

    outbox_batch_size: int = Field(default=100, ge=1)
    """Most events published in one round."""

    kafka_flush_timeout_s: float = Field(default=10.0, ge=0)
    """How long shutdown waits for queued events to reach Kafka (unsent ones stay in the outbox)."""

    host: str = "127.0.0.1"
    """Address the HTTP server binds."""

    port: int = Field(default=8082, ge=0, le=65535)
    """Port the HTTP server binds."""

    log_level: str = "INFO"
    """Log level of the service."""

    otlp_endpoint: str | None = None
    """OTLP/HTTP traces endpoint; no traces are exported when unset."""

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        if self.min_opset > self.max_opset:
            raise ValueError(f"min_opset {self.min_opset} is above max_opset {self.max_opset}")
        if ":memory:" in self.database_url or self.database_url in ("sqlite://", "sqlite:///"):
            raise ValueError("an in-memory SQLite database would lose every registration; give a file or a server")
        return self

    @property
    def db_url(self) -> str:
        """The database URL to connect to (with the default and driver applied)."""
        if self.database_url:
            return normalise_url(self.database_url)
        return f"sqlite:///{(self.data_dir / 'registry.db').resolve()}"

    @property
    def artifact_root(self) -> Path:
        """The artifact store's root directory."""
        return self.artifact_dir or self.data_dir / "artifacts"

    @property
    def triton_root(self) -> Path:
        """The Triton model repository directory."""
        return self.triton_repository or self.data_dir / "triton"
