"""Synthetic tabular data for the trainer's tests: a dataset spec and labelled rows with a known signal."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from schemas.dataset import DatasetSpec
from trainer.table import Example

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def spec_for(name: str, label: str = "binary") -> DatasetSpec:
    """Two numeric features (one nullable), a categorical one with listed categories, one without."""
    label_spec: dict[str, Any] = {"type": label}
    if label == "multiclass":
        label_spec["classes"] = ["low", "mid", "high"]
    return DatasetSpec.model_validate({
        "name": name,
        "features": [
            {"name": "x1", "type": "numeric"},
            {"name": "x2", "type": "numeric", "nullable": True},
            {"name": "region", "type": "categorical", "categories": ["north", "south", "east", "west"]},
            {"name": "segment", "type": "categorical"},
        ],
        "label": label_spec,
    })


def synthetic_rows(n: int, *, seed: int = 0, label: str = "binary", noisy_until: float = 0.0,
                   start: datetime = T0) -> list[dict[str, Any]]:
    """``n`` rows ``{"event_id", "entity_id", "event_time", "features", "label"}`` one second apart.

    The label depends on x1, x2 and the region; the first ``noisy_until`` share of the rows (by
    time) get random labels instead, so a model trained on them learns nothing useful.
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        x1 = rng.gauss(0, 1)
        x2 = None if rng.random() < 0.05 else rng.gauss(10, 3)
        region = rng.choice(["north", "south", "east", "west"])
        segment = rng.choice("abcde")
        score = 1.8 * x1 - 0.4 * ((x2 if x2 is not None else 10) - 10) + (1.5 if region == "north" else -0.3)
        if label == "regression":
            value: Any = round(3.0 * score + rng.gauss(0, 0.5), 4)
        elif label == "multiclass":
            value = ["low", "mid", "high"][0 if score < -0.5 else (1 if score < 1.0 else 2)]
        else:
            value = int(rng.random() < 1 / (1 + math.exp(-2 * score)))
        if i < n * noisy_until:
            value = rng.choice(["low", "mid", "high"]) if label == "multiclass" else (
                rng.gauss(0, 5) if label == "regression" else rng.randint(0, 1))
        rows.append({"event_id": f"ev-{seed}-{i}", "entity_id": f"ent-{seed}-{i}",
                     "event_time": start + timedelta(seconds=i),
                     "features": {"x1": round(x1, 5), "x2": None if x2 is None else round(x2, 5), "region": region,
                                  "segment": segment},
                     "label": value})
    return rows


def examples(rows: list[dict[str, Any]]) -> list[Example]:
    """The rows as training examples."""
    return [Example(r["event_id"], r["entity_id"], r["event_time"].timestamp(), r["features"], r["label"])
            for r in rows]


@pytest.fixture
def make_spec() -> Callable[..., DatasetSpec]:
    """:func:`spec_for`."""
    return spec_for


@pytest.fixture
def make_rows() -> Callable[..., list[dict[str, Any]]]:
    """:func:`synthetic_rows`."""
    return synthetic_rows


@pytest.fixture
def make_examples() -> Callable[..., list[Example]]:
    """``make_examples(n, seed=0, label="binary", noisy_until=0.0)``: synthetic rows as examples."""

    def build(n: int, **kwargs: Any) -> list[Example]:
        return examples(synthetic_rows(n, **kwargs))

    return build
