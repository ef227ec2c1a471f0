"""JSON-safe encoding of OTel attribute values and timestamps. Pure functions."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

JsonValue = Any


def json_safe(value: object) -> JsonValue:
    """Encode any value OTel allows on an attribute (and some it does not) as strict JSON.

    Strict JSON has no NaN/Infinity: they become the strings "NaN", "Infinity", "-Infinity" so nothing is lost
    and the request stays valid. Sequences become lists; bytes (not allowed by OTel, but instrumentations slip)
    are decoded leniently; anything else becomes its str().
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        if math.isnan(value):
            return "NaN"
        return "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, Sequence):
        return [json_safe(v) for v in value]
    return str(value)


def attributes_dict(attributes: Mapping[str, object] | None) -> dict[str, JsonValue]:
    if not attributes:
        return {}
    return {str(key): json_safe(value) for key, value in attributes.items()}


def iso_from_ns(unix_nanos: int | None) -> str | None:
    """ISO 8601 UTC with `Z` and millisecond precision (truncated, never rounded up past the real instant)."""
    if unix_nanos is None:
        return None
    millis = unix_nanos // 1_000_000
    dt = datetime.fromtimestamp(millis // 1000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{millis % 1000:03d}Z"


def parse_json_maybe(value: object) -> JsonValue:
    """Parse a JSON-in-a-string attribute; keep the raw string when it is not JSON."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            # json.loads output is JSON already, except NaN/Infinity literals: map those while parsing.
            return json.loads(value, parse_constant=_NON_FINITE.__getitem__)
        except (ValueError, RecursionError):
            return value
    return json_safe(value)


_NON_FINITE = {"NaN": "NaN", "Infinity": "Infinity", "-Infinity": "-Infinity"}


def hex_trace_id(trace_id: int) -> str:
    return f"{trace_id:032x}"


def hex_span_id(span_id: int) -> str:
    return f"{span_id:016x}"
