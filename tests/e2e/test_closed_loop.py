"""The closed loop end to end, as ``deploy/tributary up`` runs it: shift -> drift -> retrain -> canary -> champion.

One run of the stack runner with a fresh state, free ports and the demo's fast settings; it
stops by itself once the post-shift version is champion. The test reads the timeline it
printed and checks every milestone, in order, and that every process of the stack is gone.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.localstack import REPO, free_port

pytestmark = pytest.mark.integration

MILESTONES = [
    ("baseline champion", r"baseline v1 trained \(auc [\d.]+\) and made champion"),
    ("shift", r"SHIFT injected"),
    ("drift naming the shifted features", r"drift detected in window \S+ against v1: features [^(]*debt_ratio, income"),
    ("retrain command", r"retrain command drift-credit-w\d+ \(reason drift"),
    ("version 2 registered", r"model credit-default v2 registered"),
    ("canary", r"canary v2 at 25%"),
    ("canary stepped by the analysis", r"canary analysis: step v2 25% -> 50%"),
    ("promoted", r"promoted: v2 is champion \(was v1\) by inference/canary-analysis"),
    ("recovery time", r"shift onset -> new champion: [\d.]+ s"),
]


def _processes_mentioning(text: str) -> list[int]:
    """Processes whose environment or command line mentions ``text`` (the run's state folder)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            blob = (proc / "environ").read_bytes() + (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in blob:
            found.append(int(proc.name))
    return found


@pytest.mark.timeout(780)
def test_a_shift_is_detected_retrained_canaried_and_promoted_by_itself(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {**os.environ, "TRIBUTARY_STATE": str(state), "KAFKA_CONTROLLER_PORT": str(free_port())}
    ports = {name: str(free_port()) for name in ("kafka", "ingest", "registry", "trainer", "drift", "inference")}
    command = [sys.executable, "-m", "deploy.stack", "--until-promoted", "--timeout", "600", "--shift-at", "30",
               "--seed", "7", *(a for name, port in ports.items() for a in (f"--{name}-port", port))]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=720)
    out = done.stdout
    assert done.returncode == 0, f"{out}\n{done.stderr}"

    at = 0
    for name, pattern in MILESTONES:
        found = re.compile(pattern).search(out, at)
        assert found is not None, f"milestone {name!r} missing (or out of order) after position {at}:\n{out}"
        at = found.end()
    # The gate's decision comes from another service than the registry's events: only "after the command".
    command = re.search(r"retrain command drift-credit-w\d+", out)
    assert command is not None
    assert re.compile(r"gate decision: promote v2 \(champion v1, .*serving check passed\)").search(out, command.end())
    recovery = float(re.search(r"shift onset -> new champion: ([\d.]+) s", out).group(1))  # type: ignore[union-attr]
    assert 0 < recovery < 420
    assert "gate decision: refuse" not in out and "canary analysis: rollback" not in out

    # The registry accepts only signed artifacts here: both versions came signed by the trainer's key.
    registry_log = [json.loads(line) for line in (state / "logs" / "registry.log").read_text().splitlines()
                    if line.startswith("{")]
    registered = [r for r in registry_log if r.get("msg") == "version registered"]
    assert [r.get("version") for r in registered] == [1, 2], registered
    assert {r.get("signed_by") for r in registered} == {"demo-trainer"}, registered

    # Everything stopped, in reverse order, and nothing of the run is left running.
    assert "stopped: every process of the stack has exited" in out
    assert not (state / "kafka" / "broker.pid").exists()
    assert _processes_mentioning(str(state)) == []
