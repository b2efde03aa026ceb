"""Configuration of the drift service, read from ``DRIFT_*`` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from drift.monitor import DEFAULT_RETRAIN_ON, MonitorConfig
from drift.policy import PolicyConfig


class Settings(BaseSettings):
    """Every knob of the drift service; each field is ``DRIFT_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="DRIFT_", extra="ignore", use_attribute_docstrings=True)

    kafka_bootstrap: str = "127.0.0.1:9092"
    """Comma-separated Kafka bootstrap servers."""

    app_id: str = "tributary-drift"
    """Faust application id: the consumer group and the prefix of the state changelog topic."""

    state_dir: str = "var/drift"
    """Faust's data directory (the state itself lives in the changelog topic)."""

    session_timeout_s: float = Field(default=60.0, ge=6, le=300)
    """Kafka consumer-group session timeout: how long the group waits for a member that stopped
    answering (a killed worker) before its partitions move (to a standby worker, when one runs);
    a restarted worker waits it out unless it has a ``group_instance_id``."""

    group_instance_id: str | None = Field(default=None, min_length=1, max_length=249)
    """Static group membership (``group.instance.id``): a worker restarted under the same id takes its
    partitions back at once instead of after the dead member's session. Unique per worker: the active
    worker and each standby have their own (see the README on scaling out). Static members never leave
    the group on a graceful stop either, so a standby takes over only after the session. Unset: dynamic
    membership."""

    registry_url: str = "http://127.0.0.1:8082"
    """Model registry base URL (reference statistics of the champion)."""

    registry_timeout_s: float = Field(default=10.0, gt=0)
    """Timeout of one registry request."""

    window_size: int = Field(default=1000, ge=10)
    """Feature events per window."""

    window_step: int | None = Field(default=None, ge=1)
    """Events between two windows; unset = ``window_size`` (tumbling), smaller = sliding."""

    min_samples: int = Field(default=30, ge=1)
    """Fewest non-null values a test needs in a window; below it the test is skipped."""

    alpha: float = Field(default=0.05, gt=0, lt=1)
    """Level of the p-value tests (KS, chi-squared, prediction KS) after correction."""

    correction: Literal["benjamini-hochberg", "bonferroni", "none"] = "benjamini-hochberg"
    """Multiple-testing correction across the p-value tests of a window."""

    psi_threshold: float = Field(default=0.2, gt=0)
    """PSI above which a numeric feature (or the predictions) drifted."""

    psi_bins: int = Field(default=10, ge=2)
    """Quantile bins for PSI when the reference has no histogram."""

    js_threshold: float = Field(default=0.2, gt=0, le=1)
    """Jensen-Shannon distance (base 2) above which a categorical feature drifted."""

    new_category_threshold: float = Field(default=0.01, ge=0, le=1)
    """Share of values in categories unknown to the reference above which it is flagged."""

    missing_rate_tolerance: float = Field(default=0.05, ge=0, le=1)
    """Missing rate allowed above the reference's before the feature is flagged."""

    out_of_range_tolerance: float = Field(default=0.01, ge=0, le=1)
    """Share of values outside the spec's (else the reference's) bounds allowed."""

    adwin_delta: float = Field(default=0.002, gt=0, lt=1)
    """ADWIN confidence on the online error rate."""

    ph_threshold: float = Field(default=50.0, gt=0)
    """Page-Hinkley threshold (lambda) on the online error rate."""

    ph_delta: float = Field(default=0.005, ge=0)
    """Page-Hinkley tolerated change (delta)."""

    ph_min_instances: int = Field(default=30, ge=1)
    """Errors Page-Hinkley needs before it may flag."""

    error_memory: int = Field(default=10_000, ge=100)
    """Joined errors kept to rebuild the detectors after a restart."""

    bootstrap_reference: bool = True
    """Without reference statistics, use the first full window as the reference."""

    retrain_on: list[str] = Field(default_factory=lambda: sorted(DEFAULT_RETRAIN_ON))
    """Tests whose drift counts for the retrain policy (data-quality tests are reported only)."""

    consecutive_windows: int = Field(default=2, ge=1)
    """Drifted windows in a row that fire a retrain command (hysteresis on)."""

    clear_windows: int = Field(default=3, ge=1)
    """Clean windows in a row that re-arm the policy after a command (hysteresis off)."""

    cooldown_s: float = Field(default=3600.0, ge=0)
    """Least event time between two retrain commands for a dataset."""

    retrain_window_s: float | None = Field(default=None, gt=0)
    """Event time a retrain command's window covers, ending at the drifted report's end (recent data
    only, so the new model learns the shifted data); unset: from the start of the retained stream."""

    recovery_objective_s: float = Field(default=4 * 3600.0, gt=0)
    """Objective of drift-to-recovery time: from the first drifted window of a dataset to its model's
    next champion (exported as ``drift_recovery_objective_seconds``; alerts compare against it)."""

    pending_ttl_s: float | None = Field(default=7 * 86400.0, gt=0)
    """Event time (``served_at``) a champion prediction waits for its label, behind the dataset's newest
    prediction, before it is dropped (unset: no limit in time)."""

    pending_max: int = Field(default=100_000, ge=1)
    """Most predictions waiting for a label per dataset; past it the oldest is dropped."""

    reports_kept: int = Field(default=50, ge=1)
    """Recent reports kept per dataset for the REST API."""

    create_topics: bool = True
    """Create the catalogue's topics at start-up when they are missing."""

    startup_timeout_s: float = Field(default=30.0, gt=0)
    """Time start-up gives the broker before the service fails."""

    otlp_endpoint: str | None = None
    """OTLP/HTTP traces endpoint; no export when unset."""

    host: str = "127.0.0.1"
    """Address the HTTP server binds."""

    port: int = 8085
    """Port the HTTP server binds."""

    log_level: str = "INFO"
    """Root log level."""

    log_json: bool = True
    """JSON log lines (false: plain text for a terminal)."""

    @model_validator(mode="after")
    def _step_fits(self) -> Settings:
        if self.window_step is not None and self.window_step > self.window_size:
            raise ValueError(f"DRIFT_WINDOW_STEP ({self.window_step}) must not exceed DRIFT_WINDOW_SIZE "
                             f"({self.window_size})")
        return self

    def monitor_config(self) -> MonitorConfig:
        """The monitor's configuration."""
        return MonitorConfig(
            window_size=self.window_size, window_step=self.window_step or self.window_size,
            min_samples=self.min_samples, alpha=self.alpha, correction=self.correction,
            psi_threshold=self.psi_threshold, psi_bins=self.psi_bins, js_threshold=self.js_threshold,
            new_category_threshold=self.new_category_threshold, missing_rate_tolerance=self.missing_rate_tolerance,
            out_of_range_tolerance=self.out_of_range_tolerance, adwin_delta=self.adwin_delta,
            ph_threshold=self.ph_threshold, ph_delta=self.ph_delta, ph_min_instances=self.ph_min_instances,
            error_memory=self.error_memory, bootstrap_reference=self.bootstrap_reference,
            retrain_on=frozenset(self.retrain_on), reports_kept=self.reports_kept,
            policy=PolicyConfig(consecutive=self.consecutive_windows, clear=self.clear_windows,
                                cooldown_s=self.cooldown_s),
        )
