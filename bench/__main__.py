"""Run every benchmark and write one table: ``python -m bench [--quick]``.

Each benchmark prints its own figures and returns rows for the summary table, which goes to
stdout and to ``bench/results/latest.md``. A benchmark with pass criteria (``load``) that fails
still adds its rows; the run then exits with status 1.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench import BenchmarkFailed, drift_throughput, inference_latency, ingest_throughput, load, trainer_throughput

BENCHMARKS = {"ingest": ingest_throughput.run, "inference": inference_latency.run, "trainer": trainer_throughput.run,
              "drift": drift_throughput.run, "load": load.run}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run Tributary's benchmarks.")
    parser.add_argument("names", nargs="*", choices=[*BENCHMARKS, []], help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller workloads, for a smoke run")
    args = parser.parse_args(argv)
    rows: list[tuple[str, str, str, str, str]] = []
    failed: list[str] = []
    for name in args.names or list(BENCHMARKS):
        print(f"== {name}", flush=True)
        try:
            rows += BENCHMARKS[name](quick=args.quick)
        except BenchmarkFailed as exc:
            rows += exc.rows
            failed.append(f"{name}: {exc}")
    table = ["| benchmark | ours | baseline (same run) | ratio | target |", "|---|---|---|---|---|"]
    table += [f"| {' | '.join(r)} |" for r in rows]
    text = "\n".join(table)
    print(text)
    out = Path(__file__).parent / "results" / "latest.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n{text}\n")
    print(f"written to {out}", file=sys.stderr)
    for failure in failed:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
