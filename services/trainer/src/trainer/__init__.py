"""Tributary trainer: retrain on command from the Kafka stream, export ONNX, gate and register."""

__version__ = "0.1.0"
