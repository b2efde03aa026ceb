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
RECORDS = Counter("drift_records_total", "Records consumed, by topic and outcome (applied|skipped|dead_letter|"
                  "already_applied: below the partition's position|refetch: after records skipped upstream, "
                  "waiting for them).", ["topic", "outcome"])
INPUT_GAPS = Counter("drift_input_gaps_total", "Holes in a delete-policy input partition accepted after a refetch "
                     "(records deleted before they were read, transaction markers), by topic.", ["topic"])
REFERENCE_VERSION = Gauge("drift_reference_version", "Model version whose reference the dataset is tested against "
                          "(0: bootstrapped or none).", ["dataset"])
ERROR_RATE = Gauge("drift_error_rate", "Joined error rate of the last window, by dataset.", ["dataset"])
RECOVERY_SECONDS = Gauge("drift_recovery_seconds", "Drift-to-recovery time of the last completed recovery: from the "
                         "first drifted window to the model's next champion, by dataset and model.",
                         ["dataset", "model"])
RECOVERY_OBJECTIVE = Gauge("drift_recovery_objective_seconds", "Objective of drift-to-recovery time "
                           "(DRIFT_RECOVERY_OBJECTIVE_S).")
RECOVERIES = Counter("drift_recoveries_total", "Drift episodes ended by a new champion, by dataset, model and whether "
                     "within the objective (met|missed).", ["dataset", "model", "objective"])
EPISODE_STARTED = Gauge("drift_episode_started_timestamp_seconds", "Unix time of the first drifted window of the "
                        "open drift episode of a dataset (0: none open).", ["dataset"])
PENDING = Gauge("drift_pending_predictions", "Champion predictions waiting for their label, by dataset.", ["dataset"])
PENDING_EVICTED = Counter("drift_pending_predictions_evicted_total", "Pending predictions dropped before a label came, "
                          "by dataset and reason (ttl: DRIFT_PENDING_TTL_S of event time behind the newest; "
                          "limit: more than DRIFT_PENDING_MAX).", ["dataset", "reason"])
ACTIVE = Gauge("drift_active", "1 when this worker is the group's active member (it holds every input partition and "
               "the state), 0 when it is a standby waiting to take over.")
ASSIGNMENT_EPOCH = Gauge("drift_assignment_epoch", "Epoch of the last partition assignment this worker received "
                         "(grows by one per rebalance of the group).")
