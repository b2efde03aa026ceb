"""Tributary drift service: streaming distribution tests per feature, concept drift, governed retrain commands."""

__version__ = "0.1.0"
