"""Dataset specs compiled into msgspec structs: JSON decoding, contract and spec checked in one pass in C.

The batch endpoint's fast path. For every registered dataset the strict feature contract is
rebuilt as a struct tagged by that dataset's name, whose ``features`` is a struct with exactly
the spec's features (types, bounds, categories, nullability, required-ness) and whose label
follows the spec's label. A tagged union over all datasets then decodes a whole JSON array
straight from the request body in one msgspec call, and the same structs encode each event's
payload again without building a dict per event.

The compiled structs accept a subset of what the row-by-row path accepts, never more, and give
the same event for it; when a batch fails here the caller falls back to the row-by-row path,
which names every problem of every row. Where matching the row path exactly would take Python
code per event (e.g. a float ``1.0`` as the binary label ``1``, or a bound of an integer beyond
its exact range), the compiled struct refuses and the row path decides.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, Union, cast

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType
from schemas.dataset import DatasetSpec, FeatureSpec, LabelSpec

from ingest.validation import INT64_MAX, INT64_MIN

log = logging.getLogger(__name__)

# The contract's event id: its length is checked by msgspec per event, its characters by one
# regular expression over the whole batch's ids (:func:`_ids_match`): a pattern constraint on
# the struct would run Python's ``re`` once per event, a third of the batch's decoding time.
_EVENT_ID = Annotated[str, Meta(min_length=1, max_length=128)]
_EVENT_IDS = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9._:\-]*\n)*")
_ENTITY_ID = Annotated[str, Meta(min_length=1, max_length=256)]
_AWARE = Annotated[datetime, Meta(tz=True)]
# msgspec rounds fractional seconds beyond microseconds where pydantic truncates them: batches
# with such a time go to the row path, so both paths publish the same instant. The pattern is
# anchored on the time's colons so that numbers with many decimals stay on the fast path; a
# time's digits, colons or dot written as \u escapes (\u002x, \u003x) also send the batch to
# the row path. One substring search for any \u00 escape comes first: most bodies have none.
_SUB_MICROSECOND = re.compile(rb":[0-9]{2}:[0-9]{2}\.[0-9]{7}")
_ESCAPE = b"\\u00"
_ESCAPED_TIME_CHARACTERS = re.compile(rb"\\u00[23]")


class FeatureEventStruct(Struct, kw_only=True, forbid_unknown_fields=True, tag_field="dataset", gc=False):
    """Base of every dataset's compiled feature event; ``dataset`` is the struct's tag.

    Not tracked by the cyclic garbage collector (``gc=False``): the structs hold only strings,
    numbers, datetimes and other such structs, so they cannot form cycles, and a batch of a
    thousand tracked objects would otherwise set off collections on the request path.
    """

    event_id: _EVENT_ID
    entity_id: _ENTITY_ID


def _number(low: float | None, high: float | None) -> Any:
    """A finite JSON number within ``[low, high]``; integers stay integers, floats floats.

    Integers must also fit in 64 bits, as in the row path. msgspec never reads NaN or an
    infinity from JSON, and an integer refused by its bounds is refused (not retried as a float).
    """
    int_low = INT64_MIN if low is None else max(INT64_MIN, math.ceil(low))
    int_high = INT64_MAX if high is None else min(INT64_MAX, math.floor(high))
    whole = Annotated[int, Meta(ge=int_low, le=int_high)]
    fraction = Annotated[float, Meta(ge=low, le=high)] if low is not None or high is not None else float
    return Union[whole, fraction]  # noqa: UP007


def _feature_type(feature: FeatureSpec) -> Any:
    value: Any
    if feature.type == "numeric":
        value = _number(feature.min, feature.max)
    elif feature.categories is not None:
        value = Literal[tuple(feature.categories)]
    else:
        value = str
    if feature.nullable:
        value = Union[value, None]  # noqa: UP007
    return value


def _label_type(label: LabelSpec) -> Any:
    if label.type == "regression":
        return _number(label.min, label.max)
    if label.classes is None:  # binary: 0, 1, true or false
        return Union[bool, Annotated[int, Meta(ge=0, le=1)]]  # noqa: UP007
    if any(isinstance(c, bool) for c in label.classes):
        raise TypeError("boolean classes are left to the row path")
    return Literal[tuple(label.classes)]


def feature_event_type(spec: DatasetSpec) -> type[FeatureEventStruct]:
    """The strict feature contract narrowed to ``spec``, as a struct: valid events need no further check.

    The same fields, types and defaults as :class:`schemas.ingest.FeatureEventV1` (unknown fields
    refused, as at the entry). Feature names become struct fields by position (``f0``, ``f1``, ...)
    renamed to the spec's names, so any feature name works. An optional feature that is absent
    stays absent (``UNSET``), as in the row path.

    Raises:
        TypeError: the spec has something the structs cannot express exactly (the row path
            then validates that dataset).
    """
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    rename: dict[str, str] = {}
    for position, feature in enumerate(spec.features):
        attribute = f"f{position}"
        rename[attribute] = feature.name
        value = _feature_type(feature)
        fields.append((attribute, value) if feature.required else (attribute, Union[value, UnsetType], UNSET))  # noqa: UP007
    features = msgspec.defstruct(f"Features_{spec.name}", fields, kw_only=True, forbid_unknown_fields=True,
                                 rename=rename, gc=False)
    label = _label_type(spec.label)
    event: Any = msgspec.defstruct(
        f"FeatureEvent_{spec.name}",
        [("event_time", _AWARE), ("features", features), ("label", Union[label, None], None),  # noqa: UP007
         ("schema_version", Literal[1], 1)],
        bases=(FeatureEventStruct,), tag=spec.name, kw_only=True, forbid_unknown_fields=True, gc=False,
    )
    return cast(type[FeatureEventStruct], event)


def feature_event_types(specs: Iterable[DatasetSpec]) -> dict[str, type[FeatureEventStruct]]:
    """The compiled struct of every spec that has one, by dataset name (see :func:`feature_event_type`)."""
    out: dict[str, type[FeatureEventStruct]] = {}
    for spec in specs:
        try:
            out[spec.name] = feature_event_type(spec)
        except (TypeError, ValueError) as exc:
            log.info("dataset validated row by row only", extra={"dataset": spec.name, "reason": str(exc)})
    return out


def _ids_match(events: Sequence[FeatureEventStruct]) -> bool:
    """True when every event id matches the contract's pattern (as :mod:`schemas.envelope` states it).

    The ids are joined one per line and matched at once. An id holding a line break of its own
    would split into lines that might each match, so the number of line breaks must also be
    exactly the number of events.
    """
    if not events:
        return True
    joined = "\n".join([e.event_id for e in events]) + "\n"
    return joined.count("\n") == len(events) and _EVENT_IDS.fullmatch(joined) is not None


class BatchValidator:
    """Decodes whole JSON arrays of feature events against every registered dataset at once."""

    __slots__ = ("_decoder", "_encode")

    def __init__(self, event_types: Iterable[type[FeatureEventStruct]]) -> None:
        choices = tuple(event_types)
        item: Any = Union[choices] if len(choices) > 1 else (choices[0] if choices else None)  # noqa: UP007
        self._decoder = None if item is None else msgspec.json.Decoder(list[item])
        self._encode = msgspec.json.Encoder().encode

    def validate_json(self, body: bytes) -> list[FeatureEventStruct] | None:
        """Every event of ``body`` when all are valid for their datasets, else None."""
        if self._decoder is None or _SUB_MICROSECOND.search(body) is not None:
            return None
        if _ESCAPE in body and _ESCAPED_TIME_CHARACTERS.search(body) is not None:
            return None
        try:
            events: list[FeatureEventStruct] = self._decoder.decode(body)
        except msgspec.DecodeError:  # also not JSON, or NaN/Infinity: the row path says which row
            return None
        return events if _ids_match(events) else None

    def payloads(self, events: Sequence[FeatureEventStruct]) -> list[bytes]:
        """The JSON payload of each event, as the contract's fields (defaults included)."""
        encode = self._encode
        return [encode(e) for e in events]
