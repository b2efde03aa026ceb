"""Tributary ingest: the HTTP and Kafka entry for feature and label events."""

__version__ = "0.1.0"
