"""The compiled batch validator accepts only what the row-by-row path accepts, with the same event.

The compiled models are an optimisation: a batch they refuse goes to the row path, so they may
be stricter but never looser, and an event they accept must equal the row path's event value for
value and JSON type (an integer stays an integer). The row path is the reference here.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest
from ingest.spec_models import BatchValidator, feature_event_type
from ingest.validation import CompiledSpec, validate_row
from schemas.dataset import DatasetSpec
from tributary_kit.codec import encode_event, encode_event_dicts

SPECS = [
    DatasetSpec.model_validate({
        "name": "credit",
        "features": [
            {"name": "income", "type": "numeric", "min": 0, "max": 1e6},
            {"name": "ratio", "type": "numeric", "min": -1.5, "max": 2.5, "nullable": True},
            {"name": "age", "type": "numeric", "required": False},
            {"name": "segment", "type": "categorical", "categories": ["a", "b", "1"]},
            {"name": "note", "type": "categorical", "required": False, "nullable": True},
        ],
        "label": {"type": "binary"},
    }),
    DatasetSpec.model_validate({
        "name": "tiers",
        "features": [{"name": "x", "type": "numeric"}],
        "label": {"type": "multiclass", "classes": ["gold", 2, 3]},
    }),
    DatasetSpec.model_validate({
        "name": "price",
        "features": [{"name": "x", "type": "numeric", "min": 0}],
        "label": {"type": "regression", "min": 0, "max": 100},
    }),
]
COMPILED = {s.name: CompiledSpec(s) for s in SPECS}
VALIDATOR = BatchValidator(feature_event_type(s) for s in SPECS)

FEATURE_VALUES: dict[str, list[Any]] = {
    "income": [0, 1, 1e6, 1_000_000, 1_000_001, 1e6 + 0.5, -1, -0.0, 3.25, "3", None, True, [1], {"a": 1}],
    "ratio": [-1.5, -2, -1, 2, 2.5, 3, 0.1, None, "x", False],
    "age": [30, 30.5, -4, None, "30", 10**30, 2**63 - 1, 2**63, -(2**63), 2**53 + 1],
    "segment": ["a", "b", "1", 1, "c", None, "A", True],
    "note": ["anything", "", None, 5],
    "x": [0, -1, 1.5, -0.5, None, "1", 10**20, 1e300, 123456789012345.5],
}
LABELS: dict[str, list[Any]] = {
    "credit": [0, 1, True, False, 1.0, 0.0, 2, -1, "1", "yes", None],
    "tiers": ["gold", "Gold", 2, 3, 2.0, "2", 4, True, None],
    "price": [0, 100, 100.5, 50.25, -0.1, 101, True, "5", None, 10**19],
}


def _event(dataset: str, features: dict[str, Any], label: Any = None, **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"event_id": f"e-{dataset}", "dataset": dataset, "entity_id": "c-1",
                             "event_time": "2026-11-22T03:00:00+00:00", "features": features, **extra}
    if label is not None:
        event["label"] = label
    return event


def _valid_features(dataset: str) -> dict[str, Any]:
    return {"income": 10, "ratio": 0.5, "segment": "a"} if dataset == "credit" else {"x": 1}


def _candidates() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for spec in SPECS:
        base = _valid_features(spec.name)
        for name in (f.name for f in spec.features):
            for value in FEATURE_VALUES[name]:
                out.append(_event(spec.name, {**base, name: value}))
        for label in LABELS[spec.name]:
            out.append(_event(spec.name, base, label))
        for missing in base:
            out.append(_event(spec.name, {k: v for k, v in base.items() if k != missing}))
        out.append(_event(spec.name, {**base, "unknown": 1}))
        out.append(_event(spec.name, base, labl=1))
        out.append(_event(spec.name, base, schema_version=1))
        out.append(_event(spec.name, base, schema_version=2))
        out.append({k: v for k, v in _event(spec.name, base).items() if k != "event_time"})
        out.append({**_event(spec.name, base), "event_time": "2026-11-22T03:00:00"})
        out.append({**_event(spec.name, base), "event_id": "bad id"})
        out.append({**_event(spec.name, base), "entity_id": ""})
    out.append(_event("unknown", {"x": 1}))
    return out


def _reference(event: dict[str, Any]) -> Any:
    return validate_row(json.loads(json.dumps(event)), "features", COMPILED.get, row=0)


def _wire(event: Any) -> bytes:
    """The record the row path publishes for its event model."""
    return encode_event(event, event_id=event.event_id, source="ingest",
                        occurred_at=event.event_time, event_type="t")


def _wire_compiled(event: dict[str, Any]) -> bytes:
    """The record the compiled path publishes for its event dict."""
    (value,) = encode_event_dicts([event], event_type="t", source="ingest", occurred_at=event["event_time"])
    return value


@pytest.mark.parametrize("candidate", _candidates(), ids=lambda c: json.dumps(c, sort_keys=True)[:90])
def test_compiled_validator_never_accepts_more_than_the_row_path(candidate: dict[str, Any]) -> None:
    compiled = VALIDATOR.validate_json(json.dumps([candidate]).encode())
    reference = _reference(candidate)
    if compiled is None:
        return  # the row path decides; nothing to compare
    assert not isinstance(reference, list), f"compiled accepted what the row path refuses: {reference}"
    (event,) = compiled
    # The same envelope and payload (object keys may come in another order: JSON objects are unordered).
    assert json.loads(_wire_compiled(event)) == json.loads(_wire(reference))
    for name, value in reference.features.items():
        assert type(event["features"][name]) is type(value), name
    assert type(event["label"]) is type(reference.label)
    assert set(event) == set(type(reference).model_fields)


def test_compiled_validator_takes_the_common_valid_events() -> None:
    # Without this, a validator that refused everything would pass the test above.
    valid = [c for c in _candidates() if not isinstance(_reference(c), list)]
    taken = [c for c in valid if VALIDATOR.validate_json(json.dumps([c]).encode()) is not None]
    assert len(valid) > 40
    # What the compiled path leaves to the row path on purpose: float class labels (1.0, 0.0)
    # and numbers of 16 or more digits (possibly beyond a float's exact range).
    left = [c for c in valid if c not in taken]
    assert all(isinstance(c.get("label"), float) or re.search(r"\d{16}", json.dumps(c)) for c in left), left
    assert len(left) <= 6


def test_mixed_datasets_in_one_batch_are_validated_in_one_pass() -> None:
    batch = [_event(s.name, _valid_features(s.name)) for s in SPECS] * 3
    events = VALIDATOR.validate_json(json.dumps(batch).encode())
    assert events is not None
    assert [e["dataset"] for e in events] == [e["dataset"] for e in batch]


@pytest.mark.parametrize(("dataset", "mutation"), list(itertools.product(
    ["credit", "price"], ["unknown-dataset", "bad-row-in-the-middle"])))
def test_one_bad_row_sends_the_batch_to_the_row_path(dataset: str, mutation: str) -> None:
    batch = [_event(dataset, _valid_features(dataset)) for _ in range(5)]
    batch[2] = _event("nope", {"x": 1}) if mutation == "unknown-dataset" else _event(dataset, {"x": "1"})
    assert VALIDATOR.validate_json(json.dumps(batch).encode()) is None


def test_without_specs_nothing_is_taken() -> None:
    assert BatchValidator([]).validate_json(json.dumps([_event("credit", {"income": 1})]).encode()) is None
