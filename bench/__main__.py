"""Run every benchmark and write one table: ``python -m bench [--quick]``.

Each benchmark prints its own figures and returns rows for the summary table, which goes to
stdout and to ``bench/results/latest.md``.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench import drift_throughput, inference_latency, ingest_throughput, trainer_throughput

BENCHMARKS = {"ingest": ingest_throughput.run, "inference": inference_latency.run, "trainer": trainer_throughput.run,
              "drift": drift_throughput.run}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run Tributary's benchmarks.")
    parser.add_argument("names", nargs="*", choices=[*BENCHMARKS, []], help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller workloads, for a smoke run")
    args = parser.parse_args(argv)
    rows: list[tuple[str, str, str, str, str]] = []
    for name in args.names or list(BENCHMARKS):
        print(f"== {name}", flush=True)
        rows += BENCHMARKS[name](quick=args.quick)
    table = ["| benchmark | ours | baseline (same run) | ratio | target |", "|---|---|---|---|---|"]
    table += [f"| {' | '.join(r)} |" for r in rows]
    text = "\n".join(table)
    print(text)
    out = Path(__file__).parent / "results" / "latest.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n{text}\n")
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
