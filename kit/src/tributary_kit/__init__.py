"""Tributary's common runtime kit: the plumbing every service shares and nothing else.

Kafka bytes in and out (:mod:`.codec`), an asyncio-friendly idempotent producer with delivery
reports (:mod:`.producer`), topic creation from the catalogue (:mod:`.admin`), dead-letter
records (:mod:`.deadletter`), tracing (:mod:`.telemetry`) and structured logs (:mod:`.logs`).
Domain logic never lives here.
"""
