"""Dataset specs compiled into pydantic-core validators: contract and spec checked in one pass in Rust.

The batch endpoint's fast path. For every registered dataset the strict feature contract is
rebuilt as a typed dict whose ``dataset`` is that dataset's name, whose ``features`` is a typed dict
with exactly the spec's features (types, bounds, categories, nullability, required-ness) and
whose label follows the spec's label. A tagged union over all datasets then validates a whole
JSON array in one pydantic-core call.

The compiled validators accept a subset of what the row-by-row path accepts, never more, and give
the same event for it; when a batch fails here the caller falls back to the row-by-row path,
which names every problem of every row. Where matching the row path exactly would take Python
code per event (e.g. a float ``1.0`` as the binary label ``1``), the compiled validator refuses and
the row path decides.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Annotated, Any, Literal, NotRequired, Required, Union

from pydantic import (
    AfterValidator,
    AwareDatetime,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)
from schemas.dataset import DatasetSpec, FeatureSpec, LabelSpec
from schemas.envelope import EventId
from schemas.ingest import EntityId, FiniteFloat
from typing_extensions import TypedDict

from ingest.validation import INT64_MAX, INT64_MIN

_FORBID = ConfigDict(extra="forbid")
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 16


def _number(low: float | None, high: float | None) -> Any:
    """A finite JSON number within ``[low, high]``; integers stay integers, floats floats.

    Integers must also fit in 64 bits, as in the row path.
    """
    int_bounds = Field(ge=INT64_MIN if low is None else max(INT64_MIN, math.ceil(low)),
                       le=INT64_MAX if high is None else min(INT64_MAX, math.floor(high)))
    float_bounds = Field(ge=low, le=high)
    return Union[Annotated[StrictInt, int_bounds], Annotated[FiniteFloat, float_bounds]]  # noqa: UP007


def _feature_type(feature: FeatureSpec) -> Any:
    value: Any
    if feature.type == "numeric":
        value = _number(feature.min, feature.max)
    elif feature.categories is not None:
        value = Literal[tuple(feature.categories)]
    else:
        value = StrictStr
    if feature.nullable:
        value = Union[value, None]  # noqa: UP007
    return Required[value] if feature.required else NotRequired[value]


def _label_type(label: LabelSpec) -> Any:
    if label.type == "regression":
        return _number(label.min, label.max)
    if label.classes is None:  # binary: 0, 1, true or false
        return Union[StrictBool, Annotated[StrictInt, Field(ge=0, le=1)]]  # noqa: UP007
    texts = tuple(c for c in label.classes if isinstance(c, str))
    numbers = frozenset(c for c in label.classes if not isinstance(c, str))
    choices: list[Any] = []
    if texts:
        choices.append(Literal[texts])
    if numbers:
        def member(value: int) -> int:
            if value not in numbers:
                raise ValueError("not a class of this dataset")
            return value

        choices.append(Annotated[StrictInt, AfterValidator(member)])
    return Union[tuple(choices)] if len(choices) > 1 else choices[0]  # noqa: UP007


def feature_event_type(spec: DatasetSpec) -> Any:
    """The strict feature contract narrowed to ``spec``, as a typed dict: valid events need no further check.

    The same fields, types and defaults as :class:`schemas.ingest.FeatureEventV1` (unknown fields
    refused, as at the entry), but validated into plain dicts: building a model instance per event
    would cost a fifth of the validation for nothing, since the events are only re-encoded.
    """
    make_typed_dict: Any = TypedDict
    features: Any = make_typed_dict(f"Features_{spec.name}", {f.name: _feature_type(f) for f in spec.features})
    features.__pydantic_config__ = _FORBID
    label: Any = _label_type(spec.label)
    event: Any = make_typed_dict(f"FeatureEvent_{spec.name}", {
        "event_id": Required[EventId],
        "dataset": Required[Literal[spec.name]],
        "entity_id": Required[EntityId],
        "event_time": Required[AwareDatetime],
        "features": Required[features],
        "label": NotRequired[Annotated[Union[label, None], Field(default=None)]],  # noqa: UP007
        "schema_version": NotRequired[Annotated[Literal[1], Field(default=1)]],
    })
    event.__pydantic_config__ = _FORBID
    return event


class BatchValidator:
    """Validates whole JSON arrays of feature events against every registered dataset at once."""

    __slots__ = ("_adapter",)

    def __init__(self, event_types: Iterable[Any]) -> None:
        choices = tuple(event_types)
        item: Any
        if not choices:
            item = None
        elif len(choices) == 1:
            item = choices[0]
        else:
            item = Annotated[Union[choices], Field(discriminator="dataset")]  # noqa: UP007
        self._adapter: TypeAdapter[list[Any]] | None = None if item is None else TypeAdapter(list[item])

    def validate_json(self, body: bytes) -> list[dict[str, Any]] | None:
        """Every event of ``body`` (as the contract's fields) when all are valid for their datasets, else None."""
        if self._adapter is None:
            return None
        if _LONG_NUMBER in body.translate(_DIGITS_AS_ZERO):
            # An integer of 16 or more digits may lie beyond a float's exact range, where the
            # float branch of a number would take it (as a rounded float) after the integer
            # branch refused it for its bounds: leave such batches to the row path.
            return None
        try:
            events: list[dict[str, Any]] = self._adapter.validate_json(body)
        except ValidationError:
            return None
        return events
