"""Generic checks over every event class, the committed JSON Schema and the topic catalogue."""

from __future__ import annotations

import ast
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from schemas.compat import DEFAULT_DIR, breaking_changes, current_schemas
from schemas.envelope import Envelope, Event, event_class, event_types
from schemas.topics import CATALOGUE, dlq

import schemas
from schemas import DatasetSpec, FeatureEventV1, FeatureSpec, LabelSpec, OffsetRange

HERE = Path(__file__).parent
EVENT_TYPES = sorted(event_types())


def test_every_event_module_is_registered() -> None:
    # Nine events today; a new one must come with its golden sample and committed schema.
    assert len(EVENT_TYPES) == len(list((HERE / "golden").glob("*.json")))
    assert len(EVENT_TYPES) == len(list(DEFAULT_DIR.glob("*.json")))


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_naming(event_type: str) -> None:
    cls = event_class(event_type)
    assert re.fullmatch(r"[a-z-]+\.[a-z-]+\.v\d+", event_type)
    major = event_type.rsplit(".v", 1)[1]
    assert cls.__name__.endswith(f"V{major}"), f"{cls.__name__} should end in V{major}"


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_golden_sample_parses_and_round_trips(event_type: str) -> None:
    cls = event_class(event_type)
    raw = (HERE / "golden" / f"{event_type}.json").read_text()
    envelope = Envelope[cls].model_validate_json(raw)  # type: ignore[valid-type]
    assert envelope.event_type == event_type
    assert isinstance(envelope.payload, cls)
    again = Envelope[cls].model_validate_json(envelope.model_dump_json())  # type: ignore[valid-type]
    assert again == envelope


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_committed_schema_is_current_and_compatible(event_type: str) -> None:
    committed = json.loads((DEFAULT_DIR / f"{event_type}.json").read_text())
    current = current_schemas()[event_type]
    assert breaking_changes(committed, current) == []
    assert committed == current, "stale JSON Schema: run python -m schemas.compat --write"


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_payloads_are_frozen_and_tolerant(event_type: str) -> None:
    cls = event_class(event_type)
    raw = json.loads((HERE / "golden" / f"{event_type}.json").read_text())["payload"]
    raw["a_field_from_the_future"] = 1
    payload = cls.model_validate(raw)
    name = next(iter(cls.model_fields))
    with pytest.raises(ValidationError):
        setattr(payload, name, getattr(payload, name))


def test_all_matches_defined_names() -> None:
    tree = ast.parse(Path(schemas.__file__).read_text())
    imported = {alias.asname or alias.name for node in tree.body if isinstance(node, ast.ImportFrom)
                for alias in node.names}
    assert sorted(schemas.__all__) == sorted(imported)


# --- the breaking-change check itself -------------------------------------------------------------

BASE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "a": {"type": "string"},
        "b": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None},
        "kind": {"enum": ["x", "y"], "type": "string"},
    },
    "required": ["a"],
}


def _with(**changes: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(BASE))
    out["properties"].update(changes.pop("properties", {}))
    for k, v in changes.items():
        out[k] = v
    return out


def test_adding_an_optional_field_is_compatible() -> None:
    assert breaking_changes(BASE, _with(properties={"c": {"type": "number", "default": 0}})) == []


def test_widening_a_type_is_compatible() -> None:
    widened = _with(properties={"a": {"anyOf": [{"type": "string"}, {"type": "null"}]}})
    assert breaking_changes(BASE, widened) == []


@pytest.mark.parametrize(
    ("new", "expected"),
    [
        ({"properties": {}, "required": ["a"]}, None),
        (_with(properties={"a": {"type": "integer"}}), "a: no longer accepts ['string']"),
        (_with(required=["a", "b"]), "b: became required"),
        (_with(properties={"c": {"type": "string"}}, required=["a", "c"]), "c: new required field"),
        (
            _with(properties={"kind": {"enum": ["x"], "type": "string"}}),
            "kind: no longer accepts ['enum:\"y\"']",
        ),
    ],
)
def test_breaking_changes_are_named(new: dict[str, Any], expected: str | None) -> None:
    if expected is None:  # every field removed
        new = {"type": "object", **new}
        assert sorted(breaking_changes(BASE, new)) == ["a: field removed", "b: field removed",
                                                       "kind: field removed"]
    else:
        assert expected in breaking_changes(BASE, new)


def test_a_real_breaking_change_to_a_contract_is_caught() -> None:
    committed = json.loads((DEFAULT_DIR / "ingest.feature-event.v1.json").read_text())

    class Retyped(Event):
        event_id: int
        dataset: str
        entity_id: str
        event_time: datetime
        features: dict[str, float]

    problems = breaking_changes(committed, Retyped.model_json_schema())
    assert any(p.startswith("event_id: no longer accepts") for p in problems)
    assert any(p.startswith("features") for p in problems)


# --- topic catalogue -------------------------------------------------------------------------------

@pytest.mark.parametrize("event_type", [t for t in EVENT_TYPES if t != "deadletter.dead-letter.v1"])
def test_every_event_has_its_topic(event_type: str) -> None:
    assert CATALOGUE[event_type].event_type == event_type


def test_dead_letter_topics_exist_and_follow_the_naming_rule() -> None:
    for spec in CATALOGUE.values():
        if spec.dead_letter:
            assert spec.dead_letter == dlq(spec.name)
            assert CATALOGUE[spec.dead_letter].event_type == "deadletter.dead-letter.v1"


def test_compacted_topics_keep_records() -> None:
    compacted = [s for s in CATALOGUE.values() if s.cleanup_policy == "compact"]
    assert {s.name for s in compacted} == {"ingest.dataset-spec-registered.v1", "registry.rollout-changed.v1"}
    assert all(s.config()["cleanup.policy"] == "compact" for s in compacted)


# --- contract-level validation ---------------------------------------------------------------------

NOW = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), True])
def test_feature_values_refuse_non_finite_numbers_and_booleans(bad: object) -> None:
    with pytest.raises(ValidationError):
        FeatureEventV1(event_id="e", dataset="d", entity_id="x", event_time=NOW, features={"f": bad})


def test_feature_event_needs_an_aware_time() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        FeatureEventV1.model_validate(
            {"event_id": "e", "dataset": "d", "entity_id": "x", "event_time": "2026-11-01T00:00:00",
             "features": {}}
        )


def test_event_ids_refuse_path_and_control_characters() -> None:
    for bad in ["../x", "a b", "", "x" * 129, "a\nb"]:
        with pytest.raises(ValidationError):
            FeatureEventV1(event_id=bad, dataset="d", entity_id="x", event_time=NOW, features={})


def test_dataset_spec_consistency() -> None:
    with pytest.raises(ValidationError, match="duplicate feature names: a"):
        DatasetSpec(name="d", features=[FeatureSpec(name="a", type="numeric")] * 2,
                    label=LabelSpec(type="regression"))
    with pytest.raises(ValidationError, match=r"min 2\.0 is greater than max 1\.0"):
        FeatureSpec(name="a", type="numeric", min=2, max=1)
    with pytest.raises(ValidationError, match="categories apply to categorical"):
        FeatureSpec(name="a", type="numeric", categories=["x"])
    with pytest.raises(ValidationError, match="multiclass label needs its classes"):
        LabelSpec(type="multiclass")
    with pytest.raises(ValidationError, match="before start_offset"):
        OffsetRange(topic="t", partition=0, start_offset=5, end_offset=4)
