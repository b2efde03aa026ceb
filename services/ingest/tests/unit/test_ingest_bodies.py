"""Body decoding and size limits, without I/O."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from ingest.bodies import TooLarge, decode_batch, decode_single, read_limited
from ingest.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_read_limited_returns_the_body() -> None:
    assert await read_limited(chunks(b"ab", b"cd"), limit=4, declared="4") == b"abcd"


async def test_read_limited_refuses_a_declared_oversize_without_reading_it_all() -> None:
    with pytest.raises(TooLarge) as info:
        await read_limited(chunks(b"x" * 10, b"y" * 10), limit=5, declared="20")
    assert info.value.size == 20
    assert info.value.prefix.startswith(b"x")
    assert "body of 20 bytes is over the limit of 5 bytes" in str(info.value)


async def test_read_limited_refuses_an_undeclared_oversize_while_streaming() -> None:
    with pytest.raises(TooLarge) as info:
        await read_limited(chunks(b"x" * 4, b"y" * 4), limit=5, declared=None)
    assert info.value.prefix == b"xxxx"


def test_single_needs_json_content_type() -> None:
    with pytest.raises(UnsupportedMediaType, match="'text/plain' is not supported"):
        decode_single(b"{}", "text/plain", "features")
    with pytest.raises(UnsupportedMediaType, match=r"\(none\)"):
        decode_single(b"{}", None, "features")
    assert decode_single(b'{"a": 1}', "application/json; charset=utf-8", "features").value == {"a": 1}


def test_single_refuses_garbage_and_arrays() -> None:
    with pytest.raises(BadRequest, match="not valid JSON"):
        decode_single(b"{nope", "application/json", "features")
    with pytest.raises(BadRequest, match="batch"):
        decode_single(b"[]", "application/json", "features")
    with pytest.raises(BadRequest, match="not valid JSON"):
        decode_single(b"\xff\xfe", "application/json", "features")


def test_nan_survives_decoding_so_it_is_reported_per_row() -> None:
    rows = decode_batch(b'[{"a": NaN}, {"a": 1}]', "application/json", "features", max_events=10)
    assert rows[0].value["a"] != rows[0].value["a"]
    assert rows[1].value == {"a": 1}


def test_ndjson_keeps_good_lines_when_one_is_bad() -> None:
    rows = decode_batch(b'{"a": 1}\n{oops\n\n{"a": 2}\n', "application/x-ndjson", "features", max_events=10)
    assert [r.value for r in rows] == [{"a": 1}, None, {"a": 2}]
    assert rows[1].error is not None and rows[1].error.startswith("line 2 is not valid JSON")
    assert rows[1].text == b"{oops"


def test_batch_limits_and_shapes() -> None:
    with pytest.raises(PayloadTooLarge, match="batch of 3 events is over the limit of 2"):
        decode_batch(b"[1, 2, 3]", "application/json", "features", max_events=2)
    with pytest.raises(PayloadTooLarge):
        decode_batch(b"1\n2\n3\n", "application/x-ndjson", "features", max_events=2)
    with pytest.raises(BadRequest, match="must be an array"):
        decode_batch(b'{"a": 1}', "application/json", "features", max_events=2)
    with pytest.raises(BadRequest, match="empty"):
        decode_batch(b"[]", "application/json", "features", max_events=2)
    with pytest.raises(UnsupportedMediaType, match="x-ndjson"):
        decode_batch(b"[]", "text/csv", "features", max_events=2)


VALID = (b'{"event_id": "e-1", "dataset": "d", "entity_id": "x", "event_time": "2026-11-01T00:00:00Z", '
         b'"features": {"a": 1.5, "b": "k"}}')


def test_well_formed_batches_take_the_typed_fast_path() -> None:
    rows = decode_batch(b"[" + VALID + b"," + VALID + b"]", "application/json", "features", max_events=10)
    assert [r.event is not None and r.event.features == {"a": 1.5, "b": "k"} for r in rows] == [True, True]
    single = decode_single(VALID, "application/json", "features")
    assert single.event is not None and single.event.event_id == "e-1"


def test_one_bad_row_sends_the_batch_to_the_row_by_row_path() -> None:
    bad = VALID.replace(b'"x"', b"42")
    rows = decode_batch(b"[" + VALID + b"," + bad + b"]", "application/json", "features", max_events=10)
    assert rows[0].event is None and rows[0].value["entity_id"] == "x"
    assert rows[1].value["entity_id"] == 42


def test_unknown_top_level_fields_never_take_the_fast_path() -> None:
    row = decode_single(VALID[:-1] + b', "labl": 1}', "application/json", "features")
    assert row.event is None and row.value["labl"] == 1
