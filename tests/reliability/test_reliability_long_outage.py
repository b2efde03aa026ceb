"""K7 in the suite: the broker frozen, then killed, for longer than drift's consumer session.

The short form of ``python -m tests.reliability.long_outage`` (see there for the criteria): a 10 s
session and a 30 s outage instead of 60 s and 5 minutes, which keeps what matters (the outage
outlives the session, so the group must be rejoined) at a size CI can afford.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.long_outage import RECOVERY_S, run

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("mode", ["stop", "kill"])
def test_drift_consumes_again_after_a_broker_outage_longer_than_its_session(tmp_path: Path, mode: str) -> None:
    outcome = run(tmp_path, outage_s=30, mode=mode, session_timeout_s=10, rate=50, warmup_s=15, tail_s=15)
    report = "\n".join(outcome.timeline)
    assert outcome.resumed_after_s is not None and outcome.resumed_after_s <= RECOVERY_S, report
    assert outcome.lost == 0, report
    assert outcome.acked == (50 * (15 + 30 + 15)), report
    assert outcome.drift_counted == outcome.acked, report
    assert outcome.final_lag == 0, report
