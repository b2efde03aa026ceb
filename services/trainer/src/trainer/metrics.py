"""Prometheus metrics of the trainer, defined once per process."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

COMMANDS = Counter(
    "trainer_commands_total",
    "Retrain commands by outcome (promoted|refused|blocked|failed|duplicate|retried|dead_lettered).",
    ["outcome"],
)
WINDOW_SECONDS = Histogram(
    "trainer_window_rebuild_seconds", "Time to rebuild a training window from Kafka.",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
WINDOW_ROWS = Counter("trainer_window_records_total", "Feature and label records read to rebuild windows.")
TRAIN_SECONDS = Histogram(
    "trainer_fit_seconds", "Wall time of the training loop.", buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
SERVING_DIFF = Histogram(
    "trainer_serving_max_abs_diff", "Largest difference between Triton and onnxruntime in the serving check.",
    buckets=(1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1),
)
PUBLISH_FAILURES = Counter("trainer_publish_failures_total", "Outcome publications the broker did not acknowledge.")
