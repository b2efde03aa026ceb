"""Request bodies: read within a size limit, then decode as one JSON event, a JSON array or NDJSON.

Decoding is per row wherever the format allows it (NDJSON), so one bad line never costs the
good lines of the same body. Bodies are parsed with orjson and fall back to the standard
library only when orjson refuses, so that NaN and Infinity (which Python producers emit) are
reported per row as bad values instead of making the whole body unreadable.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from ingest.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from ingest.service import Row
from ingest.spec_models import BatchValidator, FeatureEventStruct
from ingest.validation import Kind, parse_many_json, parse_one_json

JSON_TYPES = {"application/json"}
NDJSON_TYPES = {"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"}


class TooLarge(PayloadTooLarge):
    """A body over the limit; ``prefix`` holds its first bytes for the dead letter."""

    def __init__(self, message: str, *, prefix: bytes, size: int) -> None:
        super().__init__(message)
        self.prefix = prefix
        self.size = size


async def read_limited(stream: AsyncIterator[bytes], *, limit: int, declared: str | None) -> bytes:
    """The whole body, or :class:`TooLarge` as soon as it is known to exceed ``limit`` bytes."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        prefix = b""
        async for chunk in stream:  # keep a prefix for the dead letter, then stop reading
            prefix += chunk
            if len(prefix) >= 64 * 1024:
                break
        raise TooLarge(f"body of {declared} bytes is over the limit of {limit} bytes; split it",
                       prefix=prefix, size=int(declared))
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"body is over the limit of {limit} bytes; split it",
                           prefix=b"".join(chunks)[: 64 * 1024], size=size)
        chunks.append(chunk)
    return b"".join(chunks)


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type header, lower-cased, without parameters."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def _loads(raw: bytes | str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)  # accepts NaN/Infinity; raises ValueError on real garbage


def decode_single(body: bytes, content_type: str | None, kind: Kind) -> Row:
    """The one event of a single-event request.

    Raises:
        UnsupportedMediaType: not application/json.
        BadRequest: not JSON, or an array (batches have their own endpoint).
    """
    if media_type(content_type) not in JSON_TYPES:
        raise UnsupportedMediaType(f"Content-Type {content_type or '(none)'!r} is not supported; "
                                   "send application/json")
    event = parse_one_json(body, kind)
    if event is not None:
        return Row(event=event, text=body)
    try:
        value = _loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}", code="invalid_json") from exc
    if isinstance(value, list):
        raise BadRequest("body is a JSON array; send batches to the /batch endpoint", code="not_an_object")
    return Row(value=value, text=body)


@dataclass(frozen=True, slots=True)
class Checked:
    """A whole batch the compiled validator took: every event meets its dataset's spec.

    ``payloads`` holds each event's JSON payload (the contract's fields, defaults filled in).
    """

    events: list[FeatureEventStruct]
    payloads: list[bytes]


def decode_batch(body: bytes, content_type: str | None, kind: Kind, *, max_events: int,
                 compiled: BatchValidator | None = None) -> list[Row] | Checked:
    """The rows of a batch: a JSON array (application/json) or one event per line (NDJSON).

    ``compiled`` (feature batches) validates a JSON array against the dataset specs in one pass
    and answers :class:`Checked` when every event is valid. Any failure there falls back to the
    row-by-row path, which names every problem.

    Raises:
        UnsupportedMediaType: neither JSON nor NDJSON.
        BadRequest: not decodable as a whole (JSON), not an array, or empty.
        PayloadTooLarge: more than ``max_events`` rows.
    """
    media = media_type(content_type)
    rows: list[Row]
    if media in JSON_TYPES:
        checked = compiled.validate_json(body) if compiled is not None and kind == "features" else None
        if compiled is not None and checked is not None:
            if len(checked) > max_events:
                raise PayloadTooLarge(f"batch of {len(checked)} events is over the limit of {max_events}; split it")
            if not checked:
                raise BadRequest("the batch is empty", code="empty_batch")
            return Checked(checked, compiled.payloads(checked))
        events = parse_many_json(body, kind)
        if events is not None:
            if len(events) > max_events:
                raise PayloadTooLarge(f"batch of {len(events)} events is over the limit of {max_events}; split it")
            rows = [Row(event=e) for e in events]
            if not rows:
                raise BadRequest("the batch is empty", code="empty_batch")
            return rows
        try:
            value = _loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadRequest(f"body is not valid JSON: {exc}; to keep good rows when some lines are bad, "
                             "send NDJSON (application/x-ndjson)", code="invalid_json") from exc
        if not isinstance(value, list):
            raise BadRequest("a JSON batch must be an array of events", code="not_an_array")
        if len(value) > max_events:
            raise PayloadTooLarge(f"batch of {len(value)} events is over the limit of {max_events}; split it")
        rows = [Row(value=v) for v in value]
    elif media in NDJSON_TYPES:
        lines = [line for line in body.split(b"\n") if line.strip()]
        if len(lines) > max_events:
            raise PayloadTooLarge(f"batch of {len(lines)} events is over the limit of {max_events}; split it")
        rows = []
        for number, line in enumerate(lines, start=1):
            event = parse_one_json(line, kind)
            if event is not None:
                rows.append(Row(event=event, text=line))
                continue
            try:
                rows.append(Row(value=_loads(line), text=line))
            except (UnicodeDecodeError, ValueError) as exc:
                rows.append(Row(text=line, error=f"line {number} is not valid JSON: {exc}"))
    else:
        raise UnsupportedMediaType(f"Content-Type {content_type or '(none)'!r} is not supported; send "
                                   "application/json (an array) or application/x-ndjson (one event per line)")
    if not rows:
        raise BadRequest("the batch is empty", code="empty_batch")
    return rows
