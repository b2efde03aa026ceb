"""Prometheus metrics of the registry, defined once per process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

REGISTRATIONS = Counter("registry_versions_registered", "Model versions registered.")
REFUSALS = Counter("registry_uploads_refused", "Uploads refused, by reason.", ["reason"])
ALIAS_CHANGES = Counter("registry_alias_changes", "Alias moves, removals and rollbacks.", ["alias"])
PROMOTIONS_FAILED = Counter(
    "registry_promotions_failed",
    "Alias moves whose version Triton refused to load (the alias was moved back), by alias.", ["alias"])
TRITON_FAILURES = Counter("registry_triton_sync_failures", "Failed Triton repository writes or control calls.")
OUTBOX_PUBLISHED = Counter("registry_outbox_published", "Outbox events published to Kafka.")
OUTBOX_BACKLOG = Gauge("registry_outbox_backlog", "Outbox events not yet published, as of the last drain.")
