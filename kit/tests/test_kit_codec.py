"""The envelope codec against pydantic's own JSON, for every contract."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from schemas.envelope import Envelope, event_class, event_types
from schemas.ingest import FeatureEventV1
from tributary_kit.codec import (
    PoisonMessage,
    decode,
    decode_any,
    encode,
    encode_event,
    encode_event_dicts,
    encode_event_payloads,
)

GOLDEN = Path(__file__).resolve().parents[2] / "schemas" / "tests" / "golden"


@pytest.mark.parametrize("event_type", sorted(event_types()))
def test_encode_round_trips_every_contract_like_pydantic(event_type: str) -> None:
    cls = event_class(event_type)
    envelope = Envelope[cls].model_validate_json((GOLDEN / f"{event_type}.json").read_text())  # type: ignore[valid-type]
    raw = encode(envelope)
    assert decode(raw, cls) == envelope
    assert decode_any(raw) == envelope
    # Same document as pydantic's serialiser, up to how a UTC offset is spelt in timestamps.
    assert _utc_as_z(json.loads(raw)) == _utc_as_z(json.loads(envelope.model_dump_json()))


_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$")


def _utc_as_z(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _utc_as_z(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_utc_as_z(v) for v in value]
    if isinstance(value, str) and _TIMESTAMP.match(value):
        return value.replace("+00:00", "Z")
    return value


def test_decode_refuses_garbage_wrong_types_and_tombstones() -> None:
    cls = event_class("ingest.label-event.v1")
    golden = (GOLDEN / "ingest.feature-event.v1.json").read_text()
    # A feature event carries every field a label event needs: only the type tells them apart.
    with pytest.raises(PoisonMessage, match=r"where 'ingest\.label-event\.v1' was expected"):
        decode(golden.encode(), cls)
    with pytest.raises(PoisonMessage, match=r"payload\.entity_id: Field required"):
        decode(golden.replace('"entity_id"', '"x"').replace("ingest.feature-event.v1", "ingest.label-event.v1")
               .encode(), cls)
    with pytest.raises(PoisonMessage, match="tombstone"):
        decode(None, cls)
    with pytest.raises(PoisonMessage, match="Invalid JSON"):
        decode_any(b"{not json")
    with pytest.raises(PoisonMessage, match=r"unknown event type 'x\.y\.v1'"):
        decode_any(json.dumps({**json.loads(golden), "event_type": "x.y.v1"}).encode())


def test_encode_event_dicts_gives_the_same_bytes_as_encode_event_per_event() -> None:
    now = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
    events = [
        FeatureEventV1(event_id=f"e-{i}", dataset="credit", entity_id=f"c-{i}", event_time=now,
                       features={"income": i * 1.5, "segment": "a", "n": i, "gone": None}, label=i % 2)
        for i in range(5)
    ]
    batch = encode_event_dicts([dict(e.__dict__) for e in events], source="ingest", occurred_at=now,
                               traceparent="00-ab-cd-01", event_type="features")
    assert batch == [encode_event(e, event_id=e.event_id, source="ingest", occurred_at=now,
                                  traceparent="00-ab-cd-01", event_type="features") for e in events]
    assert encode_event_dicts([], source="ingest", occurred_at=now, event_type="features") == []


@pytest.mark.parametrize("traceparent", ["00-ab-cd-01", None])
def test_encode_event_payloads_gives_the_same_bytes_as_encode_event_dicts(traceparent: str | None) -> None:
    now = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
    payloads = [
        dict(FeatureEventV1(event_id=f"e-{i}", dataset="credit", entity_id=f"c-{i}", event_time=now,
                            features={"income": i * 1.5, "segment": "\"a\"", "n": i}, label=i % 2).__dict__)
        for i in range(4)
    ]
    spliced = encode_event_payloads([orjson.dumps(p) for p in payloads], [p["event_id"] for p in payloads],
                                    source="ingest", occurred_at=now, traceparent=traceparent,
                                    event_type=FeatureEventV1.EVENT_TYPE)
    assert spliced == encode_event_dicts(payloads, source="ingest", occurred_at=now, traceparent=traceparent,
                                         event_type=FeatureEventV1.EVENT_TYPE)
    assert decode(spliced[1], FeatureEventV1).payload == FeatureEventV1.model_validate(payloads[1])
    with pytest.raises(ValueError, match="zip"):
        encode_event_payloads([b"{}"], [], source="ingest", occurred_at=now, event_type="features")
