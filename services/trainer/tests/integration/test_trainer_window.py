"""Windows rebuilt from the real broker: times to offsets, labels joined, exact replay from recorded offsets."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from schemas.topics import FEATURES, LABELS
from schemas.training import TrainingWindow
from trainer.errors import EmptyWindow, UnknownDataset
from trainer.settings import Settings
from trainer.specs import load_spec
from trainer.window import WindowReader

from .conftest import publish_rows

pytestmark = pytest.mark.integration


def reader(settings: Settings) -> WindowReader:
    return WindowReader(settings.kafka_bootstrap, features_topic=FEATURES, labels_topic=LABELS, timeout_s=60)


def test_a_window_is_resolved_to_offsets_joined_and_replayed_exactly(
        settings: Settings, dataset: Callable[..., str], make_rows: Callable[..., list[dict[str, Any]]]) -> None:
    rows = make_rows(300, seed=11)
    start = datetime.now(UTC) - timedelta(seconds=1)
    name = dataset(rows, labels="mixed", duplicates=20)
    end = datetime.now(UTC) + timedelta(milliseconds=1)  # every record so far is older (acknowledged)
    window = reader(settings).resolve(TrainingWindow(start_time=start, end_time=end))
    assert {r.topic for r in window.offsets} == {FEATURES, LABELS}
    assert window.start_time == start and window.end_time == end
    data = reader(settings).read(name, window)
    assert data.duplicates == 20 and data.feature_events == 300 and data.unlabelled == 0
    assert data.labels_unmatched == 0 and data.unreadable == 0
    expected = {r["event_id"]: r["label"] for r in rows}
    assert {e.event_id: e.label for e in data.examples} == expected  # inline, by id and by entity+time

    # Later data does not change a replay of the recorded offsets.
    publish_rows(settings.kafka_bootstrap, name, make_rows(50, seed=12), labels="inline")
    again = reader(settings).read(name, TrainingWindow(offsets=window.offsets))
    assert again.examples == data.examples
    # A fresh resolution of the same times after the end excludes the new rows too.
    assert len(reader(settings).read(name, reader(settings).resolve(
        TrainingWindow(start_time=start, end_time=end))).examples) == 300
    # Without an end time the window reaches the log end and includes them.
    assert len(reader(settings).read(name, reader(settings).resolve(TrainingWindow(start_time=start))).examples) == 350


def test_an_empty_window_and_an_unknown_dataset(settings: Settings, dataset: Callable[..., str],
                                                make_rows: Callable[..., list[dict[str, Any]]]) -> None:
    name = dataset(make_rows(20, seed=13))
    future = datetime.now(UTC) + timedelta(hours=1)
    window = reader(settings).resolve(TrainingWindow(start_time=future, end_time=future + timedelta(hours=1)))
    assert all(r.start_offset == r.end_offset for r in window.offsets)
    with pytest.raises(EmptyWindow, match="no feature events"):
        reader(settings).read(name, window)
    assert load_spec(settings.kafka_bootstrap, settings.specs_topic, name).spec.name == name
    with pytest.raises(UnknownDataset, match="register it"):
        load_spec(settings.kafka_bootstrap, settings.specs_topic, "no-such-dataset")
