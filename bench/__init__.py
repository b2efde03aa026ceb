"""Tributary's benchmarks: each compares a path of ours with a baseline measured in the same run."""
