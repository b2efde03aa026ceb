"""Configuration of the trainer, read from ``TRAINER_*`` environment variables.

Only ``__main__`` and the CLI read the environment (``Settings()``); tests build
``Settings(...)`` directly. ``TRAINER_REGISTRY_TOKEN`` is required.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from schemas.envelope import DatasetName

from schemas import topics


class Schedule(BaseModel):
    """A periodic retrain: every ``every_s`` seconds, train ``model_name`` on the last ``window_s`` seconds."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    model_name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,127}$")
    dataset: DatasetName
    every_s: float = Field(gt=0)
    window_s: float | None = Field(default=None, gt=0, description="None: the whole retained stream.")


class Settings(BaseSettings):
    """Every knob of the trainer; each field is ``TRAINER_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="TRAINER_", extra="ignore", use_attribute_docstrings=True,
                                      protected_namespaces=())

    # -- Kafka --------------------------------------------------------------------------------------

    kafka_bootstrap: str = "127.0.0.1:9092"
    """Comma-separated Kafka bootstrap servers."""

    group_id: str = "trainer"
    """Consumer group of the retrain-command consumer (one partition: one command at a time)."""

    group_instance_id: str | None = Field(default=None, min_length=1, max_length=249)
    """Static group membership (``group.instance.id``): a replica restarted under the same id takes its
    partition back at once instead of after the dead member's session; unique per replica. Unset: dynamic."""

    session_timeout_s: float = Field(default=10.0, ge=6, le=300)
    """How long the group waits for a silent member (crashed, frozen) before its commands are redelivered."""

    consume_commands: bool = True
    """Consume retrain commands (false: only the HTTP API, e.g. a read-only replica)."""

    command_topic: str = topics.RETRAIN_COMMANDS
    """Topic of ``training.retrain-command.v1`` commands."""

    features_topic: str = topics.FEATURES
    """Topic of validated feature events."""

    labels_topic: str = topics.LABELS
    """Topic of validated label events."""

    specs_topic: str = topics.DATASET_SPECS
    """Compacted topic of dataset specs."""

    predictions_topic: str = topics.PREDICTIONS
    """Topic of served predictions: the sample of recent production requests for the serving check."""

    completed_topic: str = topics.TRAINING_COMPLETED
    """Topic of ``training.training-completed.v1`` outcomes (also the idempotency ledger)."""

    failed_topic: str = topics.TRAINING_FAILED
    """Topic of ``training.training-failed.v1`` outcomes (also the idempotency ledger)."""

    decisions_topic: str = topics.PROMOTION_DECISIONS
    """Topic of ``training.promotion-decided.v1`` gate decisions."""

    create_topics: bool = True
    """Create the catalogue's topics at start-up when they are missing."""

    producer_config: dict[str, Any] = Field(default_factory=dict)
    """Extra librdkafka producer settings (JSON), merged over the durable defaults."""

    delivery_timeout_s: float = Field(default=30.0, gt=0)
    """How long the broker may take to acknowledge an outcome before the command is retried."""

    max_poll_interval_s: float = Field(default=3900.0, ge=60)
    """Longest a command may run before the group considers the consumer dead; above the time budget."""

    retry_backoff_s: float = Field(default=5.0, ge=0)
    """Pause before a command whose outcome could not be published is tried again."""

    startup_timeout_s: float = Field(default=30.0, gt=0)
    """Time start-up gives the broker (topics, the ledger) before the service fails."""

    read_timeout_s: float = Field(default=120.0, gt=0)
    """Longest a window rebuild may wait for records it knows exist."""

    # -- registry and serving ----------------------------------------------------------------------

    registry_url: str = "http://127.0.0.1:8082"
    """Base URL of the model registry."""

    registry_token: SecretStr
    """Registry bearer token with the ``trainer`` role (and ``operator``, unless the next is set). Required."""

    registry_operator_token: SecretStr | None = None
    """Registry token with the ``operator`` role for alias moves; default: ``registry_token``."""

    registry_timeout_s: float = Field(default=60.0, gt=0)
    """Timeout of one registry request."""

    signing_key: Path | None = None
    """Ed25519 private key (PEM) that signs every uploaded artifact; unsigned uploads when unset."""

    signing_key_id: str | None = None
    """Name of that key as the registry knows it (its ``<key id>.pub``); default: the file's stem."""

    canary_weight: float = Field(default=0.1, gt=0, le=1)
    """Traffic share of the canary alias set on promotion."""

    triton_url: str | None = None
    """Triton's HTTP endpoint (KServe v2). Unset: the serving check is skipped, and the decision says so."""

    triton_model_name: str | None = None
    """Name of the model in Triton; default: the registry model name."""

    triton_stage_alias: Literal["shadow"] | None = "shadow"
    """Alias pointed at the candidate before the serving check, so Triton loads it; none: load it yourself."""

    triton_ready_timeout_s: float = Field(default=120.0, gt=0)
    """How long the candidate may take to become ready in Triton."""

    triton_timeout_s: float = Field(default=30.0, gt=0)
    """Timeout of one Triton request."""

    serving_sample_size: int = Field(default=64, ge=1)
    """Recent production requests sent through Triton and compared with onnxruntime."""

    serving_tolerance: float = Field(default=1e-4, gt=0)
    """Largest absolute difference between Triton's and onnxruntime's outputs."""

    # -- data --------------------------------------------------------------------------------------

    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)
    """Share of the window's rows, the latest by event time, held out for validation and the gate."""

    validation_fraction: float = Field(default=0.15, gt=0, lt=1)
    """Share of the training rows, the latest by event time, used for early stopping."""

    min_rows: int = Field(default=50, ge=10)
    """Fewest labelled rows a run needs."""

    max_categories: int = Field(default=1000, ge=1)
    """Most categories per feature learnt from the data when the spec lists none (the rest map to unknown)."""

    onehot_max_categories: int = Field(default=10, ge=0)
    """Categorical features with at most this many categories are one-hot encoded; larger ones embedded."""

    # -- model and training ------------------------------------------------------------------------

    seed: int = 42
    """Seed of every random choice (initialisation, shuffling): same data + seed = same model bytes."""

    hidden_layers: list[int] = Field(default_factory=lambda: [64, 32])
    """Widths of the hidden layers of the MLP."""

    embedding_dim_max: int = Field(default=8, ge=1)
    """Largest embedding width of a categorical feature."""

    learning_rate: float = Field(default=3e-3, gt=0)
    """Adam's learning rate."""

    weight_decay: float = Field(default=0.0, ge=0)
    """Adam's weight decay."""

    batch_size: int = Field(default=256, ge=1)
    """Rows per optimisation step."""

    max_epochs: int = Field(default=50, ge=1)
    """Most passes over the training rows."""

    patience: int = Field(default=5, ge=1)
    """Epochs without improvement of the validation loss before training stops."""

    time_budget_s: float = Field(default=1800.0, gt=0)
    """Training stops after this many seconds, keeping the best weights so far."""

    memory_budget_mb: float = Field(default=4096.0, gt=0)
    """A run whose tensors would exceed this many MiB fails with ``budget_exceeded`` before training."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train: ``auto`` uses a GPU when one is present. Export and parity always run on CPU."""

    torch_threads: int = Field(default=1, ge=1)
    """CPU threads of PyTorch; 1 keeps float reductions in one order, so the bytes are reproducible."""

    opset: int = Field(default=17, ge=13, le=21)
    """ONNX opset of the export."""

    parity_tolerance: float = Field(default=1e-4, gt=0)
    """Largest absolute difference between PyTorch and onnxruntime on the holdout."""

    code_version: str = ""
    """Commit or build of this trainer, recorded with every model."""

    # -- gate --------------------------------------------------------------------------------------

    gate_margin: float = Field(default=0.01, ge=0)
    """How much worse than the champion the candidate may be overall (absolute for auc/f1/accuracy,
    relative for rmse/mae)."""

    gate_slice_margin: float = Field(default=0.02, ge=0)
    """The same margin on every slice of a categorical feature with enough rows."""

    gate_min_slice_rows: int = Field(default=200, ge=1)
    """Slices with fewer holdout rows are reported but not gated."""

    gate_metrics: list[Literal["auc", "f1", "accuracy", "rmse", "mae"]] | None = None
    """Metrics the gate compares; default: auc, f1, accuracy (classification) or rmse, mae (regression)."""

    # -- schedule and process ----------------------------------------------------------------------

    schedules: list[Schedule] = Field(default_factory=list)
    """Periodic retrains (JSON list of ``{"model_name", "dataset", "every_s", "window_s"}``)."""

    host: str = "127.0.0.1"
    """Address the HTTP server binds."""

    port: int = 8083
    """Port the HTTP server binds."""

    otlp_endpoint: str | None = None
    """OTLP/HTTP traces endpoint; no export when unset."""

    log_level: str = "INFO"
    """Root log level."""

    log_json: bool = True
    """JSON log lines (false: plain text for a terminal)."""

    @field_validator("hidden_layers")
    @classmethod
    def _positive_widths(cls, value: list[int]) -> list[int]:
        if not value or any(w < 1 for w in value):
            raise ValueError("hidden_layers needs at least one layer, every width >= 1")
        return value

    @field_validator("registry_url", "triton_url")
    @classmethod
    def _no_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    def operator_token(self) -> str:
        """The token used for alias moves."""
        return (self.registry_operator_token or self.registry_token).get_secret_value()
