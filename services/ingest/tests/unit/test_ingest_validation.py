"""Validation rules, one by one, without I/O."""

from __future__ import annotations

import math
from typing import Any

import pytest
from ingest.validation import CompiledSpec, check_features, check_label, validate_row
from schemas.dataset import DatasetSpec, FeatureSpec, LabelSpec
from schemas.deadletter import Problem
from schemas.ingest import FeatureEventV1, LabelEventV1

SPEC = DatasetSpec(
    name="credit",
    features=[
        FeatureSpec(name="age", type="numeric", min=18, max=120),
        FeatureSpec(name="income", type="numeric", nullable=True),
        FeatureSpec(name="region", type="categorical", categories=["north", "south"]),
        FeatureSpec(name="note", type="categorical", required=False),
    ],
    label=LabelSpec(type="binary"),
)


def lookup(name: str) -> CompiledSpec | None:
    return CompiledSpec(SPEC) if name == "credit" else None


def event(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": "e-1", "dataset": "credit", "entity_id": "c-1", "event_time": "2026-11-01T10:00:00Z",
        "features": {"age": 40, "income": 5000.5, "region": "north"},
    }
    features = changes.pop("features", None)
    if features is not None:
        base["features"] = {**base["features"], **features}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def problems(obj: Any, kind: str = "features") -> dict[str, str]:
    out = validate_row(obj, kind, lookup, row=3)  # type: ignore[arg-type]
    assert isinstance(out, list), f"expected problems, got {out!r}"
    assert all(isinstance(p, Problem) and p.row == 3 for p in out)
    return {p.field: p.message for p in out}


def test_a_valid_event_becomes_a_typed_event() -> None:
    out = validate_row(event(label=1), "features", lookup)
    assert isinstance(out, FeatureEventV1)
    assert out.features == {"age": 40, "income": 5000.5, "region": "north"}
    assert out.label == 1
    assert out.event_time.tzinfo is not None


def test_optional_and_nullable_features() -> None:
    assert isinstance(validate_row(event(features={"income": None}), "features", lookup), FeatureEventV1)
    assert isinstance(validate_row(event(features={"note": "vip"}), "features", lookup), FeatureEventV1)


@pytest.mark.parametrize(
    ("obj", "field", "fragment"),
    [
        (event(features={"age": "forty"}), "features.age", "expected a number, got the string 'forty'"),
        (event(features={"age": 12}), "features.age", "12 is below the minimum 18.0"),
        (event(features={"age": 121.5}), "features.age", "121.5 is above the maximum 120.0"),
        (event(features={"age": math.nan}), "features.age", "NaN and infinities are not allowed"),
        (event(features={"age": math.inf}), "features.age", "NaN and infinities are not allowed"),
        (event(features={"age": True}), "features.age", "booleans are not feature values"),
        (event(features={"age": [1]}), "features.age", "array is not allowed as a feature value"),
        (event(features={"region": "east"}), "features.region", "'east' is not an allowed category: north, south"),
        (event(features={"region": 3}), "features.region", "expected a category (string), got the number 3"),
        (event(features={"age": None}), "features.age", "null is not allowed"),
        (event(features={"colour": "red"}), "features.colour", "unknown feature; dataset 'credit' has: age"),
        (event(event_id=...), "event_id", "required field is missing"),
        (event(event_time="2026-11-01T10:00:00"), "event_time", "timezone"),
        (event(event_time="yesterday"), "event_time", "datetime"),
        (event(dataset="nope"), "dataset", "unknown dataset 'nope'; register its spec first"),
        (event(label=2), "label", "2 is not a binary label"),
        (event(label=math.nan), "label", "NaN and infinities are not allowed"),
        (event(labl=1), "labl", "unknown field"),
        (event(event_id="../../etc"), "event_id", "String should match pattern"),
        ([1, 2], "", "an event must be a JSON object, got array"),
        ("text", "", "an event must be a JSON object, got string"),
    ],
)
def test_each_problem_names_its_field(obj: Any, field: str, fragment: str) -> None:
    found = problems(obj)
    assert field in found, found
    assert fragment in found[field]


def test_missing_required_features_are_each_reported() -> None:
    obj = event()
    obj["features"] = {"income": 1.0}
    found = problems(obj)
    assert found["features.age"] == "missing required numeric feature"
    assert found["features.region"] == "missing required categorical feature"
    assert "features.note" not in found


def test_every_problem_of_a_row_is_reported() -> None:
    found = problems(event(features={"age": 5, "region": "west", "extra": 1}))
    assert set(found) == {"features.age", "features.region", "features.extra"}


def test_problems_carry_the_event_id() -> None:
    out = validate_row(event(features={"age": 5}), "features", lookup)
    assert isinstance(out, list)
    assert out[0].event_id == "e-1"


def test_labels() -> None:
    label = {"event_id": "l-1", "dataset": "credit", "entity_id": "c-1", "event_time": "2026-11-01T10:00:00+02:00",
             "label": True, "feature_event_id": "e-1"}
    out = validate_row(label, "labels", lookup)
    assert isinstance(out, LabelEventV1)
    assert out.feature_event_id == "e-1"
    assert problems({**label, "label": "yes"}, "labels") == {
        "label": "'yes' is not a binary label: use 0, 1, true or false"
    }
    assert "label" in problems({k: v for k, v in label.items() if k != "label"}, "labels")


@pytest.mark.parametrize(
    ("spec", "label", "ok"),
    [
        (LabelSpec(type="binary"), 0, True),
        (LabelSpec(type="binary"), False, True),
        (LabelSpec(type="binary"), 0.5, False),
        (LabelSpec(type="binary", classes=["good", "bad"]), "bad", True),
        (LabelSpec(type="binary", classes=["good", "bad"]), 1, False),
        (LabelSpec(type="multiclass", classes=[1, 2, 3]), 2, True),
        (LabelSpec(type="multiclass", classes=[1, 2, 3]), "2", False),
        (LabelSpec(type="regression", min=0), 3.5, True),
        (LabelSpec(type="regression", min=0), -1, False),
        (LabelSpec(type="regression"), True, False),
        (LabelSpec(type="regression"), "3", False),
        (LabelSpec(type="regression"), 2**63 - 1, True),
        (LabelSpec(type="regression"), 2**63, False),
    ],
)
def test_label_rules(spec: LabelSpec, label: Any, ok: bool) -> None:
    assert (check_label(spec, label) == []) is ok


@pytest.mark.parametrize(("value", "ok"), [(2**63 - 1, True), (-(2**63), True), (2**63, False), (-(2**63) - 1, False),
                                           (10**30, False), (1e30, True)])
def test_integers_must_fit_in_64_bits(value: Any, ok: bool) -> None:
    """Larger integers would be refused by the envelope encoder (a server error) or misread downstream."""
    spec = CompiledSpec(DatasetSpec(name="wide", features=[FeatureSpec(name="x", type="numeric")],
                                    label=LabelSpec(type="binary")))
    found = check_features(spec, {"x": value})
    assert (found == []) is ok, found
    if not ok:
        assert found == [("features.x", "integer outside the signed 64-bit range; send large values as floats")]
