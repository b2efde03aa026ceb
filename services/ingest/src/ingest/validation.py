"""Validation of one feature or label event: the contract first, then the dataset's spec.

Pure functions with no I/O, so that the HTTP and the raw-Kafka paths apply exactly the same
rules. Every problem names its field and says what was wrong and what is allowed; a row can
have several problems and all of them are reported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import ConfigDict, TypeAdapter, ValidationError
from schemas.dataset import DatasetSpec, FeatureSpec, LabelSpec
from schemas.deadletter import Problem
from schemas.ingest import FeatureEventV1, LabelEventV1

Kind = Literal["features", "labels"]
DataEvent = FeatureEventV1 | LabelEventV1


class StrictFeatureEvent(FeatureEventV1):
    """The feature contract as ingest enforces it: unknown top-level fields are refused.

    Downstream readers stay tolerant (they ignore fields a newer producer adds); at the entry
    a misspelt field ("labl") must be an error, not a silently dropped label.
    """

    model_config = ConfigDict(extra="forbid")


class StrictLabelEvent(LabelEventV1):
    """The label contract as ingest enforces it (see :class:`StrictFeatureEvent`)."""

    model_config = ConfigDict(extra="forbid")


_STRICT: dict[Kind, type[FeatureEventV1] | type[LabelEventV1]] = {
    "features": StrictFeatureEvent,
    "labels": StrictLabelEvent,
}
_MANY: dict[Kind, TypeAdapter[list[Any]]] = {kind: TypeAdapter(list[cls]) for kind, cls in _STRICT.items()}  # type: ignore[valid-type]
_FIELDS: dict[Kind, str] = {kind: ", ".join(cls.model_fields) for kind, cls in _STRICT.items()}
_LIST_LIMIT = 20
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""Integers outside the signed 64-bit range have no faithful JSON reading in most consumers."""
_INT_RANGE = "integer outside the signed 64-bit range; send large values as floats"


class CompiledSpec:
    """A dataset spec prepared for checking many events quickly (features by name)."""

    __slots__ = ("by_name", "listing", "required", "spec")

    def __init__(self, spec: DatasetSpec) -> None:
        self.spec = spec
        self.by_name: dict[str, FeatureSpec] = {f.name: f for f in spec.features}
        self.required = [f for f in spec.features if f.required]
        self.listing = _listing(f.name for f in spec.features)


SpecLookup = Callable[[str], CompiledSpec | None]


def parse_many_json(body: bytes, kind: Kind) -> list[DataEvent] | None:
    """Every event of a JSON array body when all of them meet the contract, else None.

    The fast path for well-formed batches: parsing and contract checks happen in one pass in
    pydantic-core. None sends the caller to the row-by-row path, which names every problem.
    """
    try:
        events: list[DataEvent] = _MANY[kind].validate_json(body)
    except ValidationError:
        return None
    return events


def parse_one_json(raw: bytes | str, kind: Kind) -> DataEvent | None:
    """The event in ``raw`` when it meets the contract, else None (see :func:`parse_many_json`)."""
    try:
        return _STRICT[kind].model_validate_json(raw)
    except ValidationError:
        return None


def validate_row(obj: Any, kind: Kind, specs: SpecLookup, *, row: int | None = None) -> DataEvent | list[Problem]:
    """The typed event for ``obj``, or every problem that keeps it from being one.

    Args:
        obj: one decoded JSON value from a request body or a raw Kafka record.
        kind: which event the endpoint or topic carries.
        specs: looks up a dataset's compiled spec by name (None when unknown).
        row: position of the row in its batch, copied into the problems.
    """
    event_id = obj.get("event_id") if isinstance(obj, dict) else None
    event_id = event_id if isinstance(event_id, str) else None
    if not isinstance(obj, dict):
        return [Problem(row=row, event_id=event_id, field="",
                        message=f"an event must be a JSON object, got {_json_type(obj)}")]
    try:
        event = _STRICT[kind].model_validate(obj)
    except ValidationError as exc:
        return _contract_problems(exc, kind, row=row, event_id=event_id)
    return check_event(event, specs, row=row)


def check_event(event: DataEvent, specs: SpecLookup, *, row: int | None = None) -> DataEvent | list[Problem]:
    """``event`` when it meets its dataset's spec, else every problem (contract already met)."""
    compiled = specs(event.dataset)
    if compiled is None:
        return [Problem(row=row, event_id=event.event_id, field="dataset",
                        message=f"unknown dataset {event.dataset!r}; register its spec first (POST /v1/datasets)")]
    found: list[tuple[str, str]] = []
    if isinstance(event, FeatureEventV1):
        found += check_features(compiled, event.features)
        if event.label is not None:
            found += [("label", m) for m in check_label(compiled.spec.label, event.label)]
    else:
        found += [("label", m) for m in check_label(compiled.spec.label, event.label)]
    if found:
        return [Problem(row=row, event_id=event.event_id, field=field, message=message) for field, message in found]
    return event


def check_features(compiled: CompiledSpec, features: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(field, message)`` for every way ``features`` breaks the spec; empty when valid."""
    out: list[tuple[str, str]] = []
    by_name = compiled.by_name
    for name, value in features.items():
        feature = by_name.get(name)
        if feature is None:
            out.append((f"features.{name}", f"unknown feature; dataset {compiled.spec.name!r} has: {compiled.listing}"))
            continue
        # Inline fast path for the common case: an in-range number for a numeric feature.
        if (
            feature.type == "numeric" and value.__class__ in (int, float) and INT64_MIN <= value <= INT64_MAX
            and (feature.min is None or value >= feature.min) and (feature.max is None or value <= feature.max)
        ):
            continue
        message = _check_value(feature, value)
        if message:
            out.append((f"features.{name}", message))
    if len(features) < len(by_name) or out:
        for feature in compiled.required:
            if feature.name not in features:
                out.append((f"features.{feature.name}", f"missing required {feature.type} feature"))
    return out


def _check_value(feature: FeatureSpec, value: Any) -> str | None:
    if value is None:
        return None if feature.nullable else "null is not allowed: the feature is not nullable"
    if feature.type == "numeric":
        if isinstance(value, str):
            return f"expected a number, got the string {_short(value)}"
        if not math.isfinite(value):  # the contract refuses these already; kept for direct callers
            return "NaN and infinities are not allowed"
        if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
            return _INT_RANGE
        if feature.min is not None and value < feature.min:
            return f"{value} is below the minimum {feature.min}"
        if feature.max is not None and value > feature.max:
            return f"{value} is above the maximum {feature.max}"
        return None
    if not isinstance(value, str):
        return f"expected a category (string), got the number {value}"
    if feature.categories is not None and value not in feature.categories:
        return f"{_short(value)} is not an allowed category: {_listing(feature.categories)}"
    return None


def check_label(spec: LabelSpec, label: Any) -> list[str]:
    """Messages for every way ``label`` breaks ``spec``; empty when valid."""
    if spec.type == "regression":
        if isinstance(label, bool) or not isinstance(label, int | float):
            return [f"expected a numeric regression target, got {_json_type(label)} {_short(label)}"]
        if isinstance(label, int) and not INT64_MIN <= label <= INT64_MAX:
            return [_INT_RANGE]
        if spec.min is not None and label < spec.min:
            return [f"{label} is below the minimum {spec.min}"]
        if spec.max is not None and label > spec.max:
            return [f"{label} is above the maximum {spec.max}"]
        return []
    if spec.type == "binary" and spec.classes is None:
        if isinstance(label, bool) or label in (0, 1):
            return []
        return [f"{_short(label)} is not a binary label: use 0, 1, true or false"]
    classes = spec.classes or []
    # Classes match by value and JSON type, so "1" and 1 stay different classes.
    if any(type(c) is type(label) and c == label for c in classes):
        return []
    return [f"{_short(label)} is not a class of this dataset: {_listing(str(c) for c in classes)}"]


def _contract_problems(exc: ValidationError, kind: Kind, *, row: int | None, event_id: str | None) -> list[Problem]:
    def problem(field: str, message: str) -> Problem:
        return Problem(row=row, event_id=event_id, field=field, message=message)

    by_field: dict[str, Problem] = {}
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        if loc and loc[0] == "features" and len(loc) >= 2:
            field, message = f"features.{loc[1]}", _value_message(err["input"], "a feature value", "a number, "
                                                                  "a string or null")
        elif loc and loc[0] == "label":
            field, message = "label", _value_message(err["input"], "a label", "a boolean, a number or a string")
        else:
            field = ".".join(loc[:1])
            if err["type"] == "missing":
                message = "required field is missing"
            elif err["type"] == "extra_forbidden":
                message = f"unknown field; {kind} events have: {_FIELDS[kind]}"
            else:
                message = err["msg"]
        by_field.setdefault(field, problem(field, message))
    return list(by_field.values())


def _value_message(value: Any, what: str, allowed: str) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN and infinities are not allowed"
    if isinstance(value, bool) and what == "a feature value":
        return "booleans are not feature values: send 0/1 or a category string"
    return f"{_json_type(value)} is not allowed as {what}: use {allowed}"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _listing(names: Any) -> str:
    names = list(names)
    head = ", ".join(names[:_LIST_LIMIT])
    return head + (f" (and {len(names) - _LIST_LIMIT} more)" if len(names) > _LIST_LIMIT else "")
