"""The compiled batch validator accepts only what the row-by-row path accepts, with the same event.

The compiled structs are an optimisation: a batch they refuse goes to the row path, so they may
be stricter but never looser, and an event they accept must equal the row path's event value for
value and JSON type (an integer stays an integer). The row path is the reference here.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ingest.spec_models import BatchValidator, FeatureEventStruct, feature_event_type, feature_event_types
from ingest.validation import CompiledSpec, validate_row
from schemas.dataset import DatasetSpec
from schemas.ingest import FeatureEventV1
from tributary_kit.codec import decode, encode_event, encode_event_payloads

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
    "income": [0, 1, 1e6, 1_000_000, 1_000_001, 1e6 + 0.5, -1, -0.0, 3.25, "3", None, True, [1], {"a": 1},
               float("nan"), float("inf"), float("-inf")],
    "ratio": [-1.5, -2, -1, 2, 2.5, 3, 0.1, None, "x", False],
    "age": [30, 30.5, -4, None, "30", 10**30, 2**63 - 1, 2**63, -(2**63), 2**53 + 1],
    "segment": ["a", "b", "1", 1, "c", None, "A", True],
    "note": ["anything", "", None, 5],
    "x": [0, -1, 1.5, -0.5, None, "1", 10**20, 1e300, 123456789012345.5, 2**64, -(2**63) - 1, float("nan"),
          False, 1e-320],
}
LABELS: dict[str, list[Any]] = {
    "credit": [0, 1, True, False, 1.0, 0.0, 2, -1, "1", "yes", None],
    "tiers": ["gold", "Gold", 2, 3, 2.0, "2", 4, True, None],
    "price": [0, 100, 100.5, 50.25, -0.1, 101, True, "5", None, 10**19, float("inf"), 99.99999999999999],
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
        out.append({**_event(spec.name, base), "event_id": "e-1\n"})
        out.append({**_event(spec.name, base), "event_id": "e-1\ne-2"})
        out.append({**_event(spec.name, base), "event_id": "\ne-1"})
        out.append({**_event(spec.name, base), "event_id": "-e"})
        out.append({**_event(spec.name, base), "event_id": "e.1:2_3-4"})
        out.append({**_event(spec.name, base), "event_id": "x" * 129})
        out.append({**_event(spec.name, base), "entity_id": "c" * 257})
        out.append({**_event(spec.name, base), "event_id": 5})
        for when in ("2026-11-22T03:00:00.1234567+00:00", "2026-11-22T03:00:00.123456Z", "2026-11-22T05:30:00+02:30",
                     "2026-11-22 03:00:00Z", "2026-02-30T03:00:00Z", "2026-11-22T03:00:00-00:00", 1_700_000_000):
            out.append({**_event(spec.name, base), "event_time": when})
    out.append(_event("unknown", {"x": 1}))
    return out


def _reference(event: dict[str, Any]) -> Any:
    return validate_row(json.loads(json.dumps(event)), "features", COMPILED.get, row=0)


def _wire(event: Any) -> bytes:
    """The record the row path publishes for its event model."""
    return encode_event(event, event_id=event.event_id, source="ingest",
                        occurred_at=event.event_time, event_type=FeatureEventV1.EVENT_TYPE)


def _wire_compiled(event: FeatureEventStruct) -> bytes:
    """The record the compiled path publishes for its event struct."""
    (value,) = encode_event_payloads(VALIDATOR.payloads([event]), [event.event_id],
                                     event_type=FeatureEventV1.EVENT_TYPE,
                                     source="ingest", occurred_at=event.event_time)  # type: ignore[attr-defined]
    return value


def _payload(event: FeatureEventStruct) -> dict[str, Any]:
    """The compiled event as the JSON values its payload carries."""
    payload: dict[str, Any] = json.loads(VALIDATOR.payloads([event])[0])
    return payload


@pytest.mark.parametrize("candidate", _candidates(), ids=lambda c: json.dumps(c, sort_keys=True)[:90])
def test_compiled_validator_never_accepts_more_than_the_row_path(candidate: dict[str, Any]) -> None:
    compiled = VALIDATOR.validate_json(json.dumps([candidate]).encode())
    reference = _reference(candidate)
    if compiled is None:
        return  # the row path decides; nothing to compare
    assert not isinstance(reference, list), f"compiled accepted what the row path refuses: {reference}"
    (event,) = compiled
    # The same envelope and payload once read (object keys may come in another order and a UTC
    # time may be written "Z" or "+00:00": both are the same JSON event).
    wire, reference_wire = _wire_compiled(event), _wire(reference)
    assert decode(wire, FeatureEventV1) == decode(reference_wire, FeatureEventV1)
    payload, reference_payload = json.loads(wire)["payload"], json.loads(reference_wire)["payload"]
    assert {k: v for k, v in payload.items() if k != "event_time"} == {
        k: v for k, v in reference_payload.items() if k != "event_time"}
    for name, value in reference.features.items():
        assert type(payload["features"][name]) is type(value), name
    assert type(payload["label"]) is type(reference.label)
    assert set(payload) == set(type(reference).model_fields)


def test_compiled_validator_takes_the_common_valid_events() -> None:
    # Without this, a validator that refused everything would pass the test above.
    valid = [c for c in _candidates() if not isinstance(_reference(c), list)]
    taken = [c for c in valid if VALIDATOR.validate_json(json.dumps([c]).encode()) is not None]
    assert len(valid) > 40
    # What the compiled path leaves to the row path on purpose: float class labels (1.0, 0.0),
    # times with more than six fractional digits (rounded by one, cut by the other) and times
    # given as Unix timestamps.
    left = [c for c in valid if c not in taken]
    assert all(isinstance(c.get("label"), float) or not isinstance(c["event_time"], str)
               or re.search(r"\.\d{7}", c["event_time"]) for c in left), left
    assert len(left) <= 9


def test_mixed_datasets_in_one_batch_are_validated_in_one_pass() -> None:
    batch = [_event(s.name, _valid_features(s.name)) for s in SPECS] * 3
    events = VALIDATOR.validate_json(json.dumps(batch).encode())
    assert events is not None
    assert [_payload(e)["dataset"] for e in events] == [e["dataset"] for e in batch]


@pytest.mark.parametrize(("dataset", "mutation"), list(itertools.product(
    ["credit", "price"], ["unknown-dataset", "bad-row-in-the-middle"])))
def test_one_bad_row_sends_the_batch_to_the_row_path(dataset: str, mutation: str) -> None:
    batch = [_event(dataset, _valid_features(dataset)) for _ in range(5)]
    batch[2] = _event("nope", {"x": 1}) if mutation == "unknown-dataset" else _event(dataset, {"x": "1"})
    assert VALIDATOR.validate_json(json.dumps(batch).encode()) is None


def test_without_specs_nothing_is_taken() -> None:
    assert BatchValidator([]).validate_json(json.dumps([_event("credit", {"income": 1})]).encode()) is None


TRICKY: list[tuple[str, dict[str, Any], bool]] = [
    ("valid", _event("credit", {"income": 10, "ratio": 0.5, "segment": "a"}), True),
    ("NaN", _event("credit", {"income": float("nan"), "ratio": 0.5, "segment": "a"}), False),
    ("infinity", _event("credit", {"income": float("inf"), "ratio": 0.5, "segment": "a"}), False),
    ("bool for a number", _event("credit", {"income": True, "ratio": 0.5, "segment": "a"}), False),
    ("bool label", _event("credit", {"income": 1, "ratio": 0.5, "segment": "a"}, True), True),
    ("big int", _event("tiers", {"x": 2**63}), False),
    ("int64 max", _event("tiers", {"x": 2**63 - 1}), True),
    ("big int as float", _event("tiers", {"x": 9.3e18}), True),
    ("out of range", _event("credit", {"income": 1_000_001, "ratio": 0.5, "segment": "a"}), False),
    ("unknown feature", _event("credit", {"income": 1, "ratio": 0.5, "segment": "a", "extra": 1}), False),
    ("missing feature", _event("credit", {"income": 1, "ratio": 0.5}), False),
    ("null where not allowed", _event("credit", {"income": None, "ratio": 0.5, "segment": "a"}), False),
    ("null where allowed", _event("credit", {"income": 1, "ratio": None, "segment": "a"}), True),
    ("wrong category", _event("credit", {"income": 1, "ratio": 0.5, "segment": "z"}), False),
    ("category as number", _event("credit", {"income": 1, "ratio": 0.5, "segment": 1}), False),
    ("string class vs number class", _event("tiers", {"x": 1}, "2"), False),
    ("number class", _event("tiers", {"x": 1}, 2), True),
    ("unknown dataset", _event("nope", {"x": 1}), False),
    ("many decimals", _event("credit", {"income": 12.123456789012, "ratio": 0.1234567, "segment": "a"}), True),
    ("id of two valid ids on two lines", {**_event("credit", {"income": 1, "ratio": 0.5, "segment": "a"}),
                                          "event_id": "e-1\ne-2"}, False),
    ("id with a space", {**_event("credit", {"income": 1, "ratio": 0.5, "segment": "a"}), "event_id": "e 1"}, False),
    ("id of every allowed character", {**_event("credit", {"income": 1, "ratio": 0.5, "segment": "a"}),
                                       "event_id": "Az09._:-"}, True),
]


def test_one_bad_event_id_anywhere_in_a_batch_sends_it_to_the_row_path() -> None:
    batch = [{**_event("credit", _valid_features("credit")), "event_id": f"e-{i}"} for i in range(50)]
    assert VALIDATOR.validate_json(json.dumps(batch).encode()) is not None
    for where, bad in ((0, "_e"), (25, "e\n25"), (49, "e/49"), (25, "e-25\n")):
        mutated = [dict(e) for e in batch]
        mutated[where]["event_id"] = bad
        assert VALIDATOR.validate_json(json.dumps(mutated).encode()) is None, (where, bad)


@pytest.mark.parametrize(("name", "event", "valid"), TRICKY, ids=[t[0] for t in TRICKY])
def test_fast_and_exact_paths_agree_on_tricky_rows(name: str, event: dict[str, Any], valid: bool) -> None:
    exact = _reference(event)
    fast = VALIDATOR.validate_json(json.dumps([event]).encode())
    assert (not isinstance(exact, list)) is valid, exact
    assert (fast is not None) is valid


def test_a_batch_with_tricky_rows_falls_back_whole_and_the_row_path_keeps_exactly_the_valid_ones() -> None:
    batch = [event for _, event, _ in TRICKY]
    assert VALIDATOR.validate_json(json.dumps(batch).encode()) is None
    verdicts = [not isinstance(_reference(event), list) for event in batch]
    assert verdicts == [valid for _, _, valid in TRICKY]
    good = [event for event, ok in zip(batch, verdicts, strict=True) if ok]
    assert VALIDATOR.validate_json(json.dumps(good).encode()) is not None


def test_a_spec_the_structs_cannot_express_is_left_to_the_row_path() -> None:
    spec = DatasetSpec.model_validate({"name": "flags", "features": [{"name": "x", "type": "numeric"}],
                                       "label": {"type": "multiclass", "classes": ["a", 1]}})
    assert set(feature_event_types([spec])) == {"flags"}
    odd = spec.model_copy(update={"label": spec.label.model_copy(update={"classes": [True, "a"]})})
    assert feature_event_types([odd]) == {}


def test_feature_names_that_are_not_identifiers_keep_their_names() -> None:
    spec = DatasetSpec.model_validate({"name": "odd", "features": [{"name": "a-b.c", "type": "numeric"},
                                                                   {"name": "class", "type": "numeric"}],
                                       "label": {"type": "binary"}})
    validator = BatchValidator([feature_event_type(spec)])
    body = json.dumps([_event("odd", {"a-b.c": 1, "class": 2.5})]).encode()
    events = validator.validate_json(body)
    assert events is not None
    assert msgspec.json.decode(validator.payloads(events)[0])["features"] == {"a-b.c": 1, "class": 2.5}


def test_times_the_structs_would_round_go_to_the_row_path() -> None:
    for when in ("2026-11-22T03:00:00.1234567+00:00", "2026-11-22T03:00:00\\u002e1234567Z"):
        body = json.dumps([_event("tiers", {"x": 1})]).replace("2026-11-22T03:00:00+00:00", when).encode()
        assert VALIDATOR.validate_json(body) is None, when
        # Also with an escaped key, or without spaces around the colon.
        for variant in (body.replace(b'"event_time"', b'"event\\u005ftime"'), body.replace(b'": "', b'":"')):
            assert VALIDATOR.validate_json(variant) is None, variant
        reference = validate_row(json.loads(body)[0], "features", COMPILED.get, row=0)
        assert not isinstance(reference, list)
        assert reference.event_time.microsecond == 123456
    escaped_colon = json.dumps([_event("tiers", {"x": 1})]).replace("2026-11-22T03:00:00+00:00",
                                                                    "2026-11-22T03\\u003a00:00.1234567Z")
    assert VALIDATOR.validate_json(escaped_colon.encode()) is None


def test_other_escapes_and_long_decimals_stay_on_the_fast_path() -> None:
    event = _event("credit", {"income": 12.123456789012, "ratio": 0.1234567, "segment": "a"})
    body = json.dumps([{**event, "entity_id": "Zo\u00e9"}]).encode()  # ensure_ascii: "Zo\\u00e9"
    assert b"\\u00e9" in body
    events = VALIDATOR.validate_json(body)
    assert events is not None and events[0].entity_id == "Zo\u00e9"


# -- properties (reliability plan B3): random events, not only the enumerated ones above -------


_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, 1, 2, 3, -0.0, 1e6, 0.5, 2.5, -1.5]),
    st.text(max_size=12), st.sampled_from(["a", "b", "1", "gold", "Gold", "2", "yes", ""]),
)
_VALUES = st.one_of(_SCALARS, st.lists(_SCALARS, max_size=2),
                    st.dictionaries(st.text(max_size=3), _SCALARS, max_size=2))
_TIMES = st.one_of(
    st.sampled_from(["2026-11-22T03:00:00+00:00", "2026-11-22T03:00:00Z", "2026-11-22T03:00:00.5-07:00",
                     "2026-11-22T03:00:00.1234567Z", "2026-11-22t03:00:00z", "2026-11-22 03:00:00+00:00",
                     "2026-11-22T03:00:00", "2026-13-01T00:00:00Z", "2026-11-22T24:00:00Z", "2026-11-22T03:00Z"]),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.text(max_size=30), st.integers(),
)


@st.composite
def _random_events(draw: st.DrawFn) -> dict[str, Any]:
    """An event of a known dataset (or not) whose every field may be valid, wrong or missing."""
    spec = draw(st.sampled_from(SPECS))
    features: dict[str, Any] = {}
    base = _valid_features(spec.name)
    for feature in spec.features:
        choice = draw(st.integers(0, 4))
        if choice == 0:
            continue                                  # absent
        features[feature.name] = base.get(feature.name, 1) if choice == 1 else draw(_VALUES)
    if draw(st.booleans()):
        features[draw(st.text(min_size=1, max_size=6))] = draw(_SCALARS)
    event: dict[str, Any] = {
        "event_id": draw(st.one_of(st.just("e-1"), st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,20}", fullmatch=True),
                                   st.text(max_size=8), st.integers())),
        "dataset": draw(st.one_of(st.just(spec.name), st.text(max_size=6))),
        "entity_id": draw(st.one_of(st.just("c-1"), st.text(max_size=8), st.none())),
        "event_time": draw(_TIMES),
        "features": features if draw(st.integers(0, 9)) else draw(_VALUES),
    }
    for optional, strategy in (("label", _SCALARS), ("schema_version", st.sampled_from([1, 2, "1", None]))):
        if draw(st.booleans()):
            event[optional] = draw(strategy)
    if draw(st.integers(0, 9)) == 0:
        del event[draw(st.sampled_from(sorted(event)))]
    return event


def _json_text(event: dict[str, Any]) -> bytes | None:
    try:  # NaN and infinities as producers' json.dumps writes them
        return json.dumps([event]).encode()
    except (TypeError, ValueError):
        return None


@settings(max_examples=int(os.environ.get("TRIBUTARY_PROPERTY_EXAMPLES", "1500")), deadline=None,
          derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(event=_random_events())
def test_random_events_get_the_same_verdict_and_event_from_both_paths(event: dict[str, Any]) -> None:
    """Property: the compiled validator never takes an event the row path refuses, and when both
    take it they publish the same event; an event the row path takes survives the trip through
    its Kafka record unchanged (envelope -> bytes -> envelope)."""
    body = _json_text(event)
    if body is None:
        return
    compiled = VALIDATOR.validate_json(body)
    reference = validate_row(json.loads(body)[0], "features", COMPILED.get, row=0)
    if not isinstance(reference, list):
        assert decode(_wire(reference), FeatureEventV1).payload.model_dump() == reference.model_dump()
    if compiled is None:
        return
    assert not isinstance(reference, list), f"compiled accepted what the row path refuses: {reference}"
    (taken,) = compiled
    assert decode(_wire_compiled(taken), FeatureEventV1) == decode(_wire(reference), FeatureEventV1)
