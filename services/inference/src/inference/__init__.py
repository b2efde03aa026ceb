"""Tributary's inference gateway.

KServe v2 over REST and gRPC in front of Triton, with canary, shadow and sticky routing, rollout
state in Redis, online features and automatic canary analysis.
"""

__version__ = "0.1.0"
