"""Prometheus metrics of the drift service, defined once per process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

STATISTIC = Gauge("drift_statistic", "Last window's statistic, by dataset, feature and test.",
                  ["dataset", "feature", "test"])
P_VALUE = Gauge("drift_p_value", "Last window's corrected p-value (tests that have one).",
                ["dataset", "feature", "test"])
DRIFTED = Gauge("drift_drifted", "1 when the last window flagged the feature and test, else 0.",
                ["dataset", "feature", "test"])
WINDOWS = Counter("drift_windows_total", "Windows closed, by dataset and outcome (drifted|clean).",
                  ["dataset", "outcome"])
RETRAINS = Counter("drift_retrain_commands_total", "Retrain commands published, by dataset and model.",
                   ["dataset", "model"])
RECORDS = Counter("drift_records_total", "Records consumed, by topic and outcome (applied|skipped|dead_letter).",
                  ["topic", "outcome"])
REFERENCE_VERSION = Gauge("drift_reference_version", "Model version whose reference the dataset is tested against "
                          "(0: bootstrapped or none).", ["dataset"])
ERROR_RATE = Gauge("drift_error_rate", "Joined error rate of the last window, by dataset.", ["dataset"])
