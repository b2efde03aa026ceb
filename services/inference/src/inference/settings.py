"""Configuration of the inference gateway, read from ``INFERENCE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas import topics


class Settings(BaseSettings):
    """Every knob of the gateway; each field is ``INFERENCE_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="INFERENCE_", extra="ignore", use_attribute_docstrings=True,
                                      protected_namespaces=())

    triton_grpc_url: str
    """Triton's gRPC endpoint, ``host:port`` (for example ``triton:8001``). Required."""

    redis_url: str
    """Redis holding the rollout state and the online features (``redis://host:6379/0``). Required."""

    kafka_bootstrap: str = "127.0.0.1:9092"
    """Comma-separated Kafka bootstrap servers."""

    redis_prefix: str = "tributary:"
    """Prefix of every Redis key the gateway reads or writes."""

    triton_http_url: str | None = None
    """Triton's HTTP endpoint (``http://triton:8000``). When set, inference calls go to it over kept-alive
    HTTP/1.1 connections with binary tensors, which costs less per call than the Python gRPC client
    (about 0.35 ms at p50 measured); metadata, configuration, statistics and health stay on gRPC."""

    triton_connections: int = Field(default=2, ge=1, le=64)
    """gRPC channels to Triton; requests are spread over them round-robin."""

    coalesce: Literal["off", "auto", "all"] = "auto"
    """Coalesce concurrent requests for one model version into one Triton call: while a call for the
    version is in flight, new requests wait and go together in the next (up to its ``max_batch_size``
    rows); nothing waits for a batch to fill. ``auto``: versions that batch (``max_batch_size`` > 0)
    and that Triton does not batch itself (no ``dynamic_batching``), where it measured 1.9-3x the
    rows/s; ``all``: also versions with Triton's dynamic batching, where it measured slower (each
    coalesced call waits out Triton's queue delay alone); ``off``. See the README's measurements."""

    coalesce_calls: int = Field(default=1, ge=1, le=64)
    """With ``coalesce``: calls in flight per model version (and input layout) before new requests wait
    for the next call."""

    backend_timeout_s: float = Field(default=2.0, gt=0)
    """Deadline of every call to Triton; a late answer becomes 504."""

    breaker_failures: int = Field(default=5, ge=1)
    """Consecutive Triton calls without an answer (unreachable, or past ``backend_timeout_s``) that open the
    circuit breaker: Triton is then skipped (the fallback answers, or 503 at once) instead of every request
    waiting out the deadline. Answers that refuse the request (4xx, an unknown version) are not failures."""

    breaker_cooldown_s: float = Field(default=2.0, gt=0)
    """Time the open breaker skips Triton; then one probe (a request, or the readiness check) is let through:
    an answer closes the breaker, no answer opens it for another cooldown."""

    fallback: Literal["none", "onnxruntime"] = "none"
    """What to do when Triton gives no answer, is skipped by the open breaker, or lacks the routed version:
    answer 503/504, or run the model in-process with onnxruntime."""

    model_repository: Path | None = None
    """The registry's Triton model repository (``<repo>/<model>/<version>/model.onnx``); the fallback
    reads the ONNX files from it. Required when ``fallback`` is ``onnxruntime``."""

    max_inflight: int = Field(default=256, ge=1)
    """Requests served at once; beyond this the gateway sheds load with 429. With ``adaptive_inflight``
    the highest the adaptive limit goes."""

    adaptive_inflight: bool = False
    """Move the limit on requests served at once between 1 and ``max_inflight`` with the admitted
    requests' answer times (:mod:`inference.admission`): it shrinks while a window of answers is slower
    than ``adaptive_tolerance`` times the best recent window and grows back by one a window. Keeps an
    overload's admitted requests near their usual answer time without a hand-tuned limit."""

    adaptive_tolerance: float = Field(default=2.0, ge=1.0)
    """How much slower than the best recent window of answers a window may be before the adaptive limit
    shrinks."""

    retry_after_s: int = Field(default=1, ge=1)
    """Retry-After (seconds) sent with 429, 503 and 504 answers."""

    shadow_queue_size: int = Field(default=1000, ge=1)
    """Shadow and comparison calls waiting to run; when full, new ones are dropped and counted."""

    shadow_workers: int = Field(default=2, ge=1)
    """Concurrent shadow and comparison calls (each carries every queued mirror it can batch)."""

    shadow_batch_wait_s: float = Field(default=0.002, ge=0)
    """How long a mirror worker waits for more queued mirrors to batch into its call (no caller waits for it):
    longer means fewer, larger mirror calls, so full mirroring costs the gateway and Triton less."""

    compare_canary: bool = True
    """Also run each canary-routed request on the champion (in the background) to measure divergence."""

    rollout_refresh_s: float = Field(default=0.25, gt=0)
    """How often each replica re-reads the rollout state from Redis."""

    version_ready_check_s: float = Field(default=1.0, gt=0)
    """How often the canary and shadow versions' readiness is re-read from Triton (``/v2/models/{m}/versions/{v}/
    ready``, in the background). A canary Triton does not report ready gets no traffic (its share goes to the
    champion) and a shadow gets no mirrors; a version a rollout change names for the first time is checked before
    the change serves."""

    consume_rollouts: bool = True
    """Rebuild the rollout state from the compacted rollout topic (read from the start at every start-up)."""

    rollout_topic: str = topics.ROLLOUT_CHANGED
    """Topic of ``registry.rollout-changed.v1`` events."""

    operator_token: str | None = None
    """Bearer token required by the operator routes (rollout changes); unset: no check (development only)."""

    canary_analysis: bool = True
    """Run the automatic canary analysis (step the weight up, promote, or roll back)."""

    canary_interval_s: float = Field(default=5.0, gt=0)
    """Time between two analyses of each canary."""

    canary_steps: list[float] = Field(default_factory=lambda: [0.05, 0.25, 0.5, 1.0])
    """Canary weights the analysis steps through; after the last one the canary is promoted."""

    canary_failures: int = Field(default=5, ge=1)
    """Canary calls in a row Triton answers with a failure (a version loaded and ready that fails anyway) after
    which the gateway stops routing to the canary (its share goes to the champion), wakes the canary analysis
    (which rolls it back) and sets ``inference_version_failing``; one synthetic request a readiness round
    (``version_ready_check_s``) clears the mark when answered."""

    canary_retry_on_champion: bool = True
    """A canary call that failed on Triton (an internal error, or no answer while the breaker is closed) is answered
    by the champion instead of the caller getting 502/503/504 (``inference_canary_retried_total``); the failure
    still counts as the canary's evidence (one without an answer only once the champion answered). The champion's
    call has its own ``backend_timeout_s``: a caller whose canary call timed out waits up to twice that for the
    champion's answer; callers who would rather have the 504 at once turn this off."""

    canary_min_requests: int = Field(default=200, ge=1)
    """Canary requests a step needs before the analysis moves the weight up."""

    canary_min_requests_rollback: int = Field(default=20, ge=1)
    """Canary requests enough to roll back on clearly bad evidence."""

    canary_max_error_rate_increase: float = Field(default=0.02, ge=0)
    """Highest tolerated canary error rate above the champion's (0.02: two points)."""

    canary_max_p99_ratio: float = Field(default=1.5, gt=0)
    """Highest tolerated canary p99 latency as a multiple of the champion's."""

    canary_p99_slack_ms: float = Field(default=5.0, ge=0)
    """Latency differences below this many milliseconds never fail a canary (noise on small numbers)."""

    canary_max_divergence: float = Field(default=0.1, ge=0)
    """Highest tolerated mean absolute output difference between canary and champion."""

    canary_min_compared: int = Field(default=20, ge=1)
    """Comparisons needed before divergence counts as evidence."""

    canary_max_accuracy_drop: float = Field(default=0.02, ge=0)
    """Highest tolerated online accuracy drop of the canary below the champion, once labels arrive."""

    canary_min_labelled: int = Field(default=50, ge=1)
    """Labelled predictions per route needed before accuracy counts as evidence."""

    canary_decisions_topic: str = topics.CANARY_DECISIONS
    """Topic of ``inference.canary-decided.v1`` events."""

    predictions_topic: str = topics.PREDICTIONS
    """Topic of ``inference.prediction-event.v1`` events (one per prediction, for drift and label joins)."""

    prediction_linger_ms: int = Field(default=50, ge=0, le=1000)
    """How long prediction events wait to be batched to Kafka (their own producer; other events keep the
    default). Larger batches cost the broker and the gateway far less CPU per prediction."""

    prediction_queue_size: int = Field(default=10_000, ge=1)
    """Prediction events waiting for the producer; when full, new ones are dropped and counted."""

    features_topic: str = topics.FEATURES
    """Topic of validated feature events the online store is kept fresh from."""

    consume_features: bool = True
    """Keep the online store fresh from the feature topic."""

    features_group_id: str = "inference-features"
    """Consumer group of the online-store writer (one group for every replica: Redis is shared)."""

    feature_ttl_s: int = Field(default=7 * 24 * 3600, ge=1)
    """Time an entity's online features live in Redis after their last update."""

    model_features: dict[str, list[str]] = Field(default_factory=dict)
    """For ``/v1/predict``: the feature names, in input order, of each model whose single input is a
    ``[batch, n]`` tensor (JSON, ``{"credit": ["age", "income"]}``). Models with one ``[batch, 1]``
    input per feature need no entry: the input names are the feature names."""

    registry_url: str | None = None
    """Model registry (``http://registry:8082``), the only writer of aliases: the canary analysis and the
    operator API change aliases through its REST API (with ``registry_token``), and the routing table
    follows its rollout events. ``/v1/predict`` also reads the input contract of trainer-built models
    (``numeric`` and ``categorical`` inputs) from each version's ``reference_stats``. Unset: a standalone
    gateway that writes its routing table itself (development, benchmarks)."""

    registry_token: SecretStr | None = None
    """Registry token with the ``operator`` role, used for alias changes. Required with ``registry_url``
    when the canary analysis runs."""

    registry_timeout_s: float = Field(default=5.0, gt=0)
    """Timeout of one registry request."""

    registry_retries: int = Field(default=2, ge=0, le=10)
    """Further attempts of a registry request after a transport error, a 5xx or a 429 (then the change
    is kept and retried at the next canary analysis round)."""

    registry_retry_backoff_s: float = Field(default=0.2, ge=0)
    """Pause before the first retry of a registry request, doubled for each further one."""

    model_datasets: dict[str, str] = Field(default_factory=dict)
    """Dataset whose online features a model reads (JSON); default: the model's own name."""

    labels_topic: str = topics.LABELS
    """Topic of label events joined to recent predictions for online accuracy."""

    join_labels: bool = True
    """Join label events to recent predictions to measure each route's online accuracy."""

    label_join_capacity: int = Field(default=100_000, ge=1)
    """Recent predictions remembered per replica for the label join."""

    consume_requests: bool = True
    """Serve asynchronous inference requests from the request topic."""

    request_overload_wait_s: float = Field(default=30.0, ge=0)
    """How long a Kafka inference request the gateway refuses as overloaded (its limit on requests in
    flight, Triton's full queue) waits and is tried again before it is answered with the 429."""

    request_topic: str = topics.INFERENCE_REQUESTS
    """Topic of ``inference.inference-requested.v1`` requests."""

    response_topic: str = topics.INFERENCE_RESPONSES
    """Topic the answers (``inference.inference-completed.v1``) go to."""

    requests_group_id: str = "inference-requests"
    """Consumer group of the asynchronous request consumer."""

    group_suffix: str = ""
    """Appended to every consumer group and Redis-independent client id (tests run isolated gateways)."""

    producer_config: dict[str, Any] = Field(default_factory=dict)
    """Extra librdkafka producer settings (JSON), merged over the durable defaults."""

    create_topics: bool = True
    """Create the catalogue's topics at start-up when they are missing."""

    startup_timeout_s: float = Field(default=30.0, gt=0)
    """Time start-up gives Kafka and Redis before the service fails."""

    otlp_endpoint: str | None = None
    """OTLP/HTTP traces endpoint (e.g. http://127.0.0.1:4318/v1/traces); no export when unset."""

    host: str = "127.0.0.1"
    """Address the HTTP and gRPC servers bind."""

    port: int = 8003
    """Port of the HTTP server (KServe v2 REST, ``/v1/predict``, operator API, metrics)."""

    grpc_port: int | None = 8004
    """Port of the KServe v2 gRPC server; unset: no gRPC server."""

    log_level: str = "INFO"
    """Root log level."""

    log_json: bool = True
    """JSON log lines (false: plain text for a terminal)."""

    @field_validator("canary_steps")
    @classmethod
    def _steps_increase_to_one(cls, steps: list[float]) -> list[float]:
        if not steps or any(not 0 < s <= 1 for s in steps) or steps != sorted(set(steps)) or steps[-1] != 1:
            raise ValueError("canary_steps must increase strictly within (0, 1] and end at 1")
        return steps

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: str) -> str:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        return url

    @model_validator(mode="after")
    def _registry_owns_aliases(self) -> Settings:
        if self.registry_url and self.canary_analysis and self.registry_token is None:
            raise ValueError("INFERENCE_REGISTRY_URL is set, so aliases change only through the registry: the canary "
                             "analysis needs INFERENCE_REGISTRY_TOKEN (a registry token with the 'operator' role), "
                             "or turn the analysis off with INFERENCE_CANARY_ANALYSIS=false")
        return self

    def fallback_root(self) -> Path | None:
        """The repository the fallback reads, or None when the fallback is off."""
        if self.fallback == "none":
            return None
        if self.model_repository is None:
            raise ValueError("INFERENCE_FALLBACK=onnxruntime needs INFERENCE_MODEL_REPOSITORY")
        return self.model_repository
