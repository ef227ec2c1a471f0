"""The wire form of bulk items: compact JSON encoding, bulk request bodies, chunking, and the REST form of an item.

Pure functions; the only module state is a small cache of encoded schema sets (`_encoded_once`), read and
written by the one sender thread at a time (the exporter's send lock), so it takes no lock of its own.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from json.encoder import encode_basestring as _json_string  # C: quotes and escapes one str
from typing import Any

import pydantic_core

from prefactor_otel.mapping.values import RawJson, as_dict
from prefactor_otel.model.http import (
    BULK_CREATE_SPAN,
    BULK_FINISH_INSTANCE,
    BULK_FINISH_SPAN,
    BULK_REGISTER,
    BULK_START,
)


def encode_item(item: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON. Raises ValueError for values JSON cannot carry at all (mapping prevents these).

    pydantic-core's serializer (Rust, already a dependency through pydantic) does the common case about 3x
    faster than the stdlib encoder; non-finite floats become "NaN"/"Infinity" strings as in `json_safe`. Lone
    surrogates (Python strings may hold them, UTF-8 cannot) make it refuse the item: the stdlib path then writes
    them as "?" rather than costing the span.
    """
    schema = item.get("agent_schema_version")
    if schema is not None:
        # Every register item carries the same ~10 KB schema set (one dict shared by the planner): encode it once.
        rest = _to_json({key: value for key, value in item.items() if key != "agent_schema_version"})
        separator = b"," if rest != b"{}" else b""
        return b'%s%s"agent_schema_version":%s}' % (rest[:-1], separator, _encoded_once(schema))
    details = item.get("details")
    if type(details) is dict:
        fast = _span_create(item, details)
        if fast is not None:
            return fast
        if any(type(value) is RawJson for value in details.values()):
            # Rare (a value neither string nor payload, or not UTF-8): decode the payloads, encode it all as usual.
            details = {key: as_dict(value) if type(value) is RawJson else value for key, value in details.items()}
            return _to_json({**item, "details": details})
    return _to_json(item)


def _span_create(item: dict[str, Any], details: dict[str, Any]) -> bytes | None:
    """An item with `details` (a span create) whose values are strings (ids, times, names) and encoded payloads,
    written without a serializer call: for objects this small the call costs more than the work (5.9 -> 4.2 us
    per span create). None when a value is of another type or cannot be UTF-8: the general path takes it."""
    text = ["{"]
    for key, value in item.items():
        if key != "details":
            if type(value) is not str:
                return None
            text.append(f"{_json_string(key)}:{_json_string(value)},")
    text.append('"details":{')
    separator = ""
    embedded: list[tuple[str, RawJson]] = []
    for key, value in details.items():
        if type(value) is str:
            text.append(f"{separator}{_json_string(key)}:{_json_string(value)}")
            separator = ","
        elif type(value) is RawJson:
            embedded.append((key, value))
        else:
            return None
    try:
        parts = ["".join(text).encode()]
        for key, value in embedded:
            parts += (f"{separator}{_json_string(key)}:".encode(), value)
            separator = ","
    except UnicodeEncodeError:
        return None
    parts.append(b"}}")
    return b"".join(parts)


def encode_json(value: dict[str, Any]) -> RawJson:
    """One JSON object, compact, for embedding later (see RawJson). Raises ValueError like encode_item."""
    return RawJson(_to_json(value))


def _to_json(value: dict[str, Any]) -> bytes:
    try:
        return pydantic_core.to_json(value, inf_nan_mode="strings")
    except pydantic_core.PydanticSerializationError:
        text = _ENCODER.encode(value)  # ValueError for what JSON cannot hold (a non-string key, a set, ...)
        return text.encode("utf-8", errors="replace")


# The fallback encoder: json.dumps with non-default arguments builds a new encoder per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_ENCODED_SCHEMAS: dict[int, tuple[object, bytes]] = {}


def encoded_schema(value: dict[str, Any]) -> bytes:
    """The JSON of a schema set, encoded once per dict (the same bytes object each time: its hash is cached)."""
    return _encoded_once(value)


def _encoded_once(value: dict[str, Any]) -> bytes:
    cached = _ENCODED_SCHEMAS.get(id(value))
    if cached is not None and cached[0] is value:
        return cached[1]
    data = _to_json(value)
    if len(_ENCODED_SCHEMAS) >= 16:
        _ENCODED_SCHEMAS.clear()
    _ENCODED_SCHEMAS[id(value)] = (value, data)
    return data


def bulk_body(encoded_items: Sequence[bytes]) -> bytes:
    if len(encoded_items) < 2:
        return b'{"items":[' + b"".join(encoded_items) + b"]}"
    # One join over the whole body: wrapping a joined list would copy the megabyte-sized body twice.
    return b",".join([b'{"items":[' + encoded_items[0], *encoded_items[1:-1], encoded_items[-1] + b"]}"])


_BODY_OVERHEAD = len(bulk_body([]))


def chunk_encoded(encoded_items: Sequence[bytes], max_items: int, max_bytes: int) -> list[range]:
    """Split consecutive items into requests of at most max_items items and max_bytes bytes.

    Order is kept (parents before children). An item larger than max_bytes goes alone.
    """
    chunks: list[range] = []
    start = 0
    size = _BODY_OVERHEAD
    for index, encoded in enumerate(encoded_items):
        extra = len(encoded) + (1 if index > start else 0)
        if index > start and (index - start >= max_items or size + extra > max_bytes):
            chunks.append(range(start, index))
            start, size = index, _BODY_OVERHEAD
            extra = len(encoded)
        size += extra
    if start < len(encoded_items):
        chunks.append(range(start, len(encoded_items)))
    return chunks


def rest_request(item: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The REST path and body of a bulk item: path parameters leave the body, the rest stays as is."""
    action = item["_type"]
    body = {k: v for k, v in item.items() if k != "_type"}
    if action == BULK_REGISTER:
        return "/agent_instance/register", body
    if action in (BULK_START, BULK_FINISH_INSTANCE):
        instance_id = body.pop("agent_instance_id")
        verb = "start" if action == BULK_START else "finish"
        return f"/agent_instance/{instance_id}/{verb}", body
    if action == BULK_CREATE_SPAN:
        return "/agent_spans", body
    if action == BULK_FINISH_SPAN:
        span_id = body.pop("agent_span_id")
        return f"/agent_spans/{span_id}/finish", body
    raise ValueError(f"no REST form for bulk action {action!r}")


def instance_id_of(item: dict[str, Any]) -> str | None:
    """The Prefactor run a wire item belongs to, when the item names it (a span finish names only its span)."""
    if item.get("_type") == BULK_REGISTER:
        found = item.get("id")
    else:
        found = item.get("agent_instance_id")
        if found is None:
            details = item.get("details")
            found = details.get("agent_instance_id") if isinstance(details, dict) else None
    return found if isinstance(found, str) else None
