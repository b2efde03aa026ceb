"""Tributary model registry."""
