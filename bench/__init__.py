"""Tributary's benchmarks: each compares a path of ours with a baseline measured in the same run."""

from __future__ import annotations


class BenchmarkFailed(Exception):
    """A benchmark with pass criteria (the bounded load test) measured a failure.

    ``rows`` are the summary rows it measured all the same, so the table still shows them.
    """

    def __init__(self, message: str, rows: list[tuple[str, str, str, str, str]]) -> None:
        super().__init__(message)
        self.rows = rows
