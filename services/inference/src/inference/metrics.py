"""Prometheus metrics of the inference gateway, defined once per process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5,
                    1, 2.5, 5)

REQUESTS = Counter(
    "inference_requests_total",
    "Inference requests by protocol (rest|grpc|predict|kafka), model, version, route and status.",
    ["protocol", "model", "version", "route", "status"],
)
LATENCY = Histogram(
    "inference_request_seconds",
    "Time from a request's arrival in the core to its answer, by model, version and route "
    "(champion|canary|pinned).",
    ["model", "version", "route"],
    buckets=_LATENCY_BUCKETS,
)
BACKEND_SECONDS = Histogram(
    "inference_backend_seconds",
    "Time of one backend call by backend (triton|onnxruntime), model and version.",
    ["backend", "model", "version"],
    buckets=_LATENCY_BUCKETS,
)
FALLBACKS = Counter(
    "inference_fallback_total",
    "Requests answered by the onnxruntime fallback, by model and reason (unreachable|timeout: the Triton call got "
    "no answer; breaker_open: Triton skipped; not_loaded: Triton lacks the routed version).",
    ["model", "reason"],
)
BREAKER_STATE = Gauge("inference_breaker_state", "Circuit breaker state by backend (0 closed, 1 open, 2 half-open).",
                      ["backend"])
BREAKER_TRANSITIONS = Counter("inference_breaker_transitions_total",
                              "Circuit breaker state changes by backend, from and to state.",
                              ["backend", "from_state", "to_state"])
BREAKER_PROBES = Counter("inference_breaker_probes_total",
                         "Half-open probes by backend, kind (request|health) and outcome (ok|failed).",
                         ["backend", "kind", "outcome"])
SHED = Counter("inference_shed_total", "Requests refused with 429, by reason (inflight|backend_queue).", ["reason"])
INFLIGHT = Gauge("inference_inflight", "Requests being served right now.")
INFLIGHT_LIMIT = Gauge("inference_inflight_limit",
                       "Requests served at once before shedding with 429 (INFERENCE_ADAPTIVE_INFLIGHT: where the "
                       "adaptive limit stands now; else INFERENCE_MAX_INFLIGHT).")
SHADOW_DROPPED = Counter(
    "inference_shadow_dropped_total",
    "Shadow or comparison calls dropped because the shadow queue was full, by model and kind (shadow|compare).",
    ["model", "kind"],
)
SHADOW_CALLS = Counter(
    "inference_shadow_calls_total", "Shadow or comparison calls run, by model, kind and outcome (ok|error).",
    ["model", "kind", "outcome"],
)
SHADOW_QUEUE = Gauge("inference_shadow_queue", "Shadow or comparison calls waiting.")
DIVERGENCE = Histogram(
    "inference_divergence",
    "Mean absolute difference between a mirrored version's outputs and the answer's, by model and kind "
    "(shadow: shadow vs served version; compare: champion vs canary).",
    ["model", "kind"],
    buckets=(0, 1e-6, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 10),
)
PREDICTION_EVENTS = Counter(
    "inference_prediction_events_total",
    "Prediction events by outcome (published|dropped: queue full|failed: broker refused).",
    ["outcome"],
)
ROLLOUT_CHANGES = Counter(
    "inference_rollout_changes_total", "Rollout changes applied to Redis, by origin (topic|operator|analysis).",
    ["origin"],
)
ROLLOUT_REFRESH_FAILURES = Counter(
    "inference_rollout_refresh_failures_total", "Failed reads of the rollout state (the last good one is kept)."
)
CANARY_DECISIONS = Counter("inference_canary_decisions_total", "Canary analysis decisions by model and action.",
                           ["model", "action"])
ROLLOUT_VERSION = Gauge("inference_rollout_version", "Version each alias of a model points at (0: none), by model and "
                        "alias (champion|canary|shadow).", ["model", "alias"])
CANARY_CHANGES = Counter("inference_canary_changes_total",
                         "Attempts to carry out canary decisions by model and outcome (applied, failed: retried, "
                         "superseded: dropped).", ["model", "outcome"])
CANARY_WEIGHT = Gauge("inference_canary_weight", "Current canary weight by model.", ["model"])
FEATURE_READS = Counter("inference_feature_reads_total", "Online store reads by outcome (hit|miss|error).",
                        ["outcome"])
FEATURE_WRITES = Counter("inference_feature_writes_total", "Feature events applied to the online store by outcome "
                         "(written|stale).", ["outcome"])
ASYNC_OVERLOAD_WAITS = Counter(
    "inference_async_overload_waits_total",
    "Times a Kafka inference request was refused as overloaded and waited to be tried again.")
ASYNC_REQUESTS = Counter("inference_async_requests_total", "Kafka inference requests by outcome (ok|error).",
                         ["outcome"])
DEAD_LETTERS = Counter("inference_dead_letters_total", "Records dead-lettered, by dead-letter topic.", ["topic"])
LABELS_JOINED = Counter("inference_labels_joined_total", "Label events by outcome (joined|unmatched).", ["outcome"])
COALESCED = Histogram(
    "inference_coalesced_requests",
    "Requests carried by one Triton call of the coalescer, by model (1: the call went alone; see coalesce.py).",
    ["model"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64),
)
CANARY_SKIPPED = Counter(
    "inference_canary_skipped_total",
    "Requests the canary would have answered, sent to the champion instead (alias=canary), and shadow mirrors not "
    "made (alias=shadow), because Triton does not report the version ready (reason=not_ready) or its calls failed "
    "in a row (reason=failing), by model.",
    ["model", "alias", "reason"],
)
VERSION_FAILING = Gauge(
    "inference_version_failing",
    "1 while the model's canary or shadow version is skipped because its calls failed in a row "
    "(INFERENCE_CANARY_FAILURES) although Triton reports it ready; cleared by a synthetic request it answers.",
    ["model", "alias"],
)
VERSION_MARKED_FAILING = Counter(
    "inference_version_marked_failing_total",
    "Times a canary version was marked failing (its calls failed in a row although Triton reports it ready), by model.",
    ["model"],
)
CANARY_RETRIED = Counter(
    "inference_canary_retried_total",
    "Requests the canary failed (Triton answered with an error) that the champion then answered, by model.",
    ["model"],
)
VERSION_NOT_READY = Gauge(
    "inference_version_not_ready",
    "1 while the model's canary or shadow version is skipped because Triton does not report it ready, by model and "
    "alias (canary|shadow).",
    ["model", "alias"],
)
