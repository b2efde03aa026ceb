"""The monitor on synthetic streams: false alarms under no drift, detection delay, restart, quality tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from drift.monitor import DatasetMonitor, MonitorConfig, Observation, WindowOutcome, error_of
from drift.policy import PolicyConfig
from drift.reference import ERROR_RATE, parse_reference, stats_from_sample
from schemas.dataset import DatasetSpec

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CATS = ["a", "b", "c", "d"]
PROBS = [0.4, 0.3, 0.2, 0.1]
DISTRIBUTION_TESTS = {"ks", "psi", "chi2", "js", "new_categories"}


def draw(rng: np.random.Generator, n: int, shift: float = 0.0) -> list[dict[str, Any]]:
    x = rng.normal(shift, 1.0, size=n)
    y = rng.exponential(1.0, size=n)
    z = rng.uniform(0, 10, size=n)
    c = rng.choice(CATS, p=PROBS, size=n)
    return [{"x": float(x[i]), "y": float(y[i]), "z": float(z[i]), "c": str(c[i])} for i in range(n)]


def reference(rng: np.random.Generator, n: int = 2000) -> dict[str, Any]:
    rows = draw(rng, n)
    numeric = {k: [r[k] for r in rows] for k in ("x", "y", "z")}
    return stats_from_sample(numeric, {"c": [r["c"] for r in rows]}, max_sample=n)


def monitor(config: MonitorConfig, stats: dict[str, Any] | None, store: dict[str, Any] | None = None
            ) -> DatasetMonitor:
    m = DatasetMonitor("ds", config, {} if store is None else store)
    if stats is not None:
        m.set_reference(parse_reference(stats, model_name="m", version=1))
    return m


def feed(m: DatasetMonitor, rows: list[dict[str, Any]], start: int = 0,
         on_window: Callable[[WindowOutcome, int], None] | None = None) -> list[WindowOutcome]:
    out = []
    for i, row in enumerate(rows, start):
        res = m.observe(Observation(row, T0 + timedelta(seconds=i), "t", i % 3, i))
        if res is not None:
            out.append(res)
            if on_window is not None:
                on_window(res, i)
    return out


def distribution_drift(outcome: WindowOutcome) -> bool:
    return any(r.drifted for r in outcome.report.results if r.test in DISTRIBUTION_TESTS)


@pytest.mark.parametrize(("shift", "max_delay"), [(1.0, 200), (0.5, 400), (0.25, 1000)])
def test_drift_detection_delay_for_known_shifts(shift: float, max_delay: int) -> None:
    rng = np.random.default_rng(42)
    config = MonitorConfig(window_size=200, window_step=50, policy=PolicyConfig(consecutive=1, clear=3, cooldown_s=0))
    m = monitor(config, reference(rng))
    feed(m, draw(rng, 1000))
    change_at = 1000
    first: list[int] = []
    feed(m, draw(rng, 3000, shift=shift), start=change_at,
         on_window=lambda o, i: first.append(i) if o.retrain and not first else None)
    assert first, f"shift {shift} was never detected"
    delay = first[0] - change_at + 1
    assert delay <= max_delay, f"shift {shift}: detected {delay} events after the change"


def test_drift_one_shift_gives_one_retrain_command() -> None:
    rng = np.random.default_rng(1)
    config = MonitorConfig(window_size=200, window_step=100, policy=PolicyConfig(consecutive=2, clear=3, cooldown_s=0))
    m = monitor(config, reference(rng))
    outcomes = feed(m, draw(rng, 2000) + draw(rng, 5000, shift=1.0))
    assert sum(o.retrain for o in outcomes) == 1
    assert sum(o.report.drifted for o in outcomes) > 20


def test_drift_restart_in_the_middle_of_a_window_loses_nothing() -> None:
    rng = np.random.default_rng(9)
    stats = reference(rng)
    rows = draw(rng, 900) + draw(rng, 900, shift=0.7)
    config = MonitorConfig(window_size=300, window_step=100)
    straight = feed(monitor(config, stats), rows)
    store: dict[str, Any] = {}
    first = monitor(config, stats, store)
    before = feed(first, rows[:1234])
    for i in range(5):
        first.observe_error(float(i % 2))
    restarted = DatasetMonitor("ds", config, store)          # a new process: state only from the store
    assert restarted.seq == 1234 and restarted.in_window == first.in_window
    # the head holds where each partition stands: the stream's positions skip what it covers
    assert [restarted.applied_through("t", p) for p in range(3)] == [1234, 1232, 1233]
    after = feed(restarted, rows[1234:], start=1234)
    strip = [o.report.model_copy(update={"results": [r for r in o.report.results if r.feature != ERROR_RATE]})
             for o in (*before, *after)]
    assert [r.model_dump() for r in strip] == [o.report.model_dump() for o in straight]


def test_drift_an_event_published_twice_counts_once() -> None:
    # A producer that resends after a crash or a 503 writes the same event id at a new offset.
    rng = np.random.default_rng(4)
    rows = draw(rng, 150)
    config = MonitorConfig(window_size=100, window_step=100)
    store: dict[str, Any] = {}
    m = monitor(config, reference(rng), store)
    for i, row in enumerate(rows[:60]):
        m.observe(Observation(row, T0 + timedelta(seconds=i), "t", 0, i, f"e{i}"))
    for i, row in enumerate(rows[40:60], 40):              # resent: same ids, later offsets
        assert m.observe(Observation(row, T0 + timedelta(seconds=i), "t", 0, i + 20, f"e{i}")) is None
    restarted = DatasetMonitor("ds", config, store)
    assert restarted.seq == 60
    assert restarted.observe(Observation(rows[59], T0, "t", 1, 0, "e59")) is None   # still known after a restart
    outcomes = [restarted.observe(Observation(row, T0 + timedelta(seconds=i), "t", 0, i + 20, f"e{i}"))
                for i, row in enumerate(rows[60:], 60)]
    [window] = [o for o in outcomes if o is not None]
    ks = next(r for r in window.report.results if r.feature == "x" and r.test == "ks")
    assert ks.sample_size == 100 and restarted.seq == 150


def test_drift_data_quality_tests() -> None:
    spec = DatasetSpec.model_validate({
        "name": "ds", "label": {"type": "binary"},
        "features": [{"name": "x", "type": "numeric", "min": -3, "max": 3},
                     {"name": "c", "type": "categorical"},
                     {"name": "gone", "type": "numeric"}]})
    rng = np.random.default_rng(4)
    config = MonitorConfig(window_size=100, window_step=100)
    m = DatasetMonitor("ds", config, {}, spec=spec)
    m.set_reference(parse_reference(reference(rng)))
    rows = [{"x": (9.0 if i % 10 == 1 else 0.1) if i % 5 else None, "c": "zz" if i % 4 == 0 else "a", "extra": 1}
            for i in range(100)]
    [out] = feed(m, rows)
    by = {(r.feature, r.test): r for r in out.report.results}
    assert by[("x", "missing_rate")].statistic == pytest.approx(0.2) and by[("x", "missing_rate")].drifted
    assert by[("x", "out_of_range")].statistic == pytest.approx(10 / 80) and by[("x", "out_of_range")].drifted
    assert by[("c", "new_categories")].statistic == pytest.approx(0.25) and by[("c", "new_categories")].drifted
    assert by[("gone", "missing_features")].drifted
    assert by[("extra", "unexpected_features")].drifted
    assert not out.retrain  # data quality alone never asks for a retrain


def test_drift_without_reference_bootstraps_from_the_first_window() -> None:
    rng = np.random.default_rng(8)
    m = monitor(MonitorConfig(window_size=200, window_step=200), None)
    first, second, third = feed(m, draw(rng, 400) + draw(rng, 200, shift=2.0))
    assert "bootstrapped" in first.report.decision and m.reference.source == "bootstrap"
    assert not distribution_drift(second)
    assert distribution_drift(third)


def test_drift_without_reference_and_no_bootstrap_still_reports() -> None:
    m = monitor(MonitorConfig(window_size=50, window_step=50, bootstrap_reference=False), None)
    [out] = feed(m, draw(np.random.default_rng(0), 50))
    assert "no reference statistics" in out.report.decision
    assert not out.report.drifted


def test_drift_concept_drift_on_the_error_rate() -> None:
    rng = np.random.default_rng(5)
    m = monitor(MonitorConfig(window_size=500, window_step=500), reference(rng))
    rows = draw(rng, 3000)
    flagged = []
    for k in range(6):
        error_rate = 0.1 if k < 3 else 0.4
        for e in rng.uniform(size=500) < error_rate:
            m.observe_error(float(e))
        [out] = feed(m, rows[k * 500:(k + 1) * 500], start=k * 500)
        flagged.append({r.test for r in out.report.results if r.feature == ERROR_RATE and r.drifted})
    assert not any(flagged[:3])
    assert "adwin" in flagged[3] and "page_hinkley" in set().union(*flagged[3:])


def test_drift_prediction_drift() -> None:
    rng = np.random.default_rng(6)
    stats = reference(rng)
    stats["prediction"] = stats["features"]["x"]
    m = monitor(MonitorConfig(window_size=200, window_step=200), stats)
    for p in rng.normal(1.5, 1, size=200):
        m.observe_prediction(float(p))
    [out] = feed(m, draw(rng, 200))
    assert {r.test for r in out.report.results if r.drifted} >= {"prediction_ks", "prediction_psi"}


def test_drift_error_of() -> None:
    assert error_of(1, 1.0, regression=False) == 0.0
    assert error_of("yes", "no", regression=False) == 1.0
    assert error_of(0.5, 2.0, regression=True) == 1.5


def test_binary_scores_are_errors_at_the_half_and_commands_cover_a_recent_window() -> None:
    from drift.service import DriftService
    from schemas.drift import DriftReportV1

    # The gateway publishes a binary model's probability of class 1 as the prediction.
    assert [error_of(p, y, regression=False) for p, y in ((0.8, 1), (0.8, 0), (0.2, False), (0.5, 1))] == [0, 1, 0, 0]
    report = DriftReportV1(report_id="credit-w7", dataset="credit", model_name="credit-default", model_version=1,
                           window_start=T0, window_end=T0 + timedelta(seconds=90), drifted=True,
                           drifted_features=["income"])
    service = DriftService(MonitorConfig(), {}, references=None, publisher=None,  # type: ignore[arg-type]
                           retrain_window_s=60)
    now = T0 + timedelta(seconds=95)
    window = service.command_for(report, now=now).window
    assert (window.start_time, window.end_time) == (T0 + timedelta(seconds=35), now)
    unbounded = DriftService(MonitorConfig(), {}, references=None, publisher=None)  # type: ignore[arg-type]
    assert unbounded.command_for(report, now=now).window.start_time is None
    # Back-filled data: event times a day old, stored in Kafka just now. The window is in Kafka
    # time, so it still covers what was just stored instead of a day-old, empty stretch.
    old = report.model_copy(update={"window_start": T0 - timedelta(days=1),
                                    "window_end": T0 - timedelta(days=1) + timedelta(seconds=90)})
    window = service.command_for(old, now=now).window
    assert (window.start_time, window.end_time) == (T0 + timedelta(seconds=35), now)
