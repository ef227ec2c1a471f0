"""JSON-safe encoding of OTel attribute values and timestamps. Pure functions.

Called by whichever thread maps spans (the exporter's sending thread, the gateway's worker), possibly several at
once; the one module state, the formatted seconds of `iso_from_ns` (`_SECONDS`), is a bounded dict needing no lock
(see its comment). The JSON encoder of payloads (`encode_json`, `to_json`) lives here, below the transport, so that
the mapping can write a span's payloads as it maps them (`map_span(..., encoded=True)`); transport/wire.py uses the
same functions for its items. Its module state is read-only after import.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, TypeAlias

import pydantic_core

JsonValue = Any


RawJson: TypeAlias = bytes
"""A JSON value already encoded (compact UTF-8): plain `bytes`. The bulk encoder embeds a `bytes` value of a span
create's `details` as it is (no other value there is bytes: the mapping turns attribute bytes into text).

The exporter encodes each span's payloads as soon as they are mapped, so the dict trees the mapping built die young
instead of surviving, and being scanned by the garbage collector, until the span is delivered. Plain `bytes`, not a
subclass: a subclass of bytes is a heap type the collector tracks, and one tracked value keeps the `details` dict
holding it tracked too (every span create's); `bytes` objects are never tracked, so after a collection the details
dicts of strings and payloads are untracked and later collections skip them (docs/wire.md has the figures).
"""


def encode_json(value: dict[str, Any]) -> RawJson:
    """One JSON object, compact, for embedding later (see RawJson). Raises ValueError for values JSON cannot carry
    at all (the mapping prevents these).

    The result payload of a span with no outputs, usage or error (every plain span: most spans of most traces) is
    always the same bytes: told by its keys and three identity and type tests (no `==` on values, which a foreign
    object could answer oddly), it is the one encoded object, without a serializer call (0.57 -> 0.14 us)."""
    if len(value) == 3 and tuple(value) == _NO_RESULT_KEYS:
        outputs = value["outputs"]
        if value["token_usage"] is None and value["error"] is None and type(outputs) is dict and not outputs:
            return NO_RESULT
    return to_json(value)


_NO_RESULT_KEYS = ("outputs", "token_usage", "error")
NO_RESULT: RawJson = b'{"outputs":{},"token_usage":null,"error":null}'
"""The encoded result payload of an ended span with no outputs, usage or error (shared: bytes are immutable)."""


def to_json(value: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON of one object: orjson when installed, else pydantic-core, else the stdlib.

    orjson writes the same bytes as pydantic-core's serializer for every value the mapping builds (strings,
    ints, finite floats, bools, None, lists, dicts with string keys: tests/test_wire_orjson.py compares them, and
    benchmarks/wire_diff.py on the workloads' real items) in 0.37x its time on the benchmark's payloads (2.65 ->
    0.99 us per span realistic, 1.58 -> 0.51 small). What orjson refuses (a non-string key, an int past 64 bits, a
    lone surrogate, nesting past 254 levels) raises TypeError and goes to pydantic-core, as before. The one value
    it writes differently is a non-finite float (`null`, pydantic-core "NaN"/"Infinity"): the mapping turns those
    into strings itself (json_safe, the message parser), so none reaches here but an overflowing number literal in
    a parsed message (docs/wire.md, "The JSON encoder"). Lone surrogates make pydantic-core refuse too: the stdlib
    path then writes them as "?"; ValueError for what JSON cannot hold at all (a set, a non-string key it cannot
    make a string)."""
    if ORJSON_DUMPS is not None:
        try:
            return ORJSON_DUMPS(value)
        except TypeError:  # orjson.JSONEncodeError is a TypeError
            pass
    try:
        return pydantic_core.to_json(value, inf_nan_mode="strings")
    except pydantic_core.PydanticSerializationError:
        text = _ENCODER.encode(value)  # ValueError for what JSON cannot hold (a non-string key, a set, ...)
        return text.encode("utf-8", errors="replace")


def _orjson() -> Any:
    """The orjson module when it is installed (it is optional: without it pydantic-core encodes), else None."""
    try:
        return importlib.import_module("orjson")
    except ImportError:
        return None


_ORJSON = _orjson()
ORJSON_DUMPS: Callable[..., bytes] | None = _ORJSON.dumps if _ORJSON is not None else None
ORJSON_FRAGMENT: Callable[[bytes], object] | None = _ORJSON.Fragment if _ORJSON is not None else None
# The fallback encoder: json.dumps with non-default arguments builds a new encoder per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def as_dict(value: dict[str, Any] | RawJson) -> dict[str, Any]:
    """A payload as a dict (decoded from its JSON when it was encoded): for the rare paths that edit one."""
    if isinstance(value, bytes):
        decoded = json.loads(value)
        return decoded if isinstance(decoded, dict) else {}
    return value


def json_safe(value: object) -> JsonValue:
    """Encode any value OTel allows on an attribute (and some it does not) as strict JSON.

    Strict JSON has no NaN/Infinity: they become the strings "NaN", "Infinity", "-Infinity" so nothing is lost
    and the request stays valid. Sequences become lists; bytes (not allowed by OTel, but instrumentations slip)
    are decoded leniently; anything else becomes its str().
    """
    # Exact types first (attribute values are these): a type test costs a third of an isinstance test with a tuple.
    value_type = type(value)
    if value_type is str or value_type is int or value_type is bool or value is None:
        return value
    # Concrete containers next: the ABC checks below are slow, and OTel attribute sequences are tuples.
    if value_type is tuple or value_type is list:
        return [json_safe(v) for v in value]  # type: ignore[attr-defined]
    if value_type is dict:
        return {str(k): json_safe(v) for k, v in value.items()}  # type: ignore[attr-defined]
    if isinstance(value, (bool, int, str)):  # their subclasses (an IntEnum, a str subclass) as they are
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


def plain_attributes(attributes: Mapping[str, object] | None) -> dict[str, object]:
    """A plain dict copy of an attribute mapping. A span's `attributes` is a MappingProxyType over the SDK's
    BoundedAttributes: its `copy()` is a C-level dict copy, where `dict(...)` fetches each value through Python.
    (No emptiness test first: on that proxy it is one more Python call, `BoundedAttributes.__len__`.)"""
    if attributes is None:
        return {}
    copy = getattr(attributes, "copy", None)
    if copy is not None:
        try:
            copied = copy()
        except Exception:  # a foreign mapping whose copy() needs arguments or fails: the generic path
            copied = None
        if type(copied) is dict:
            return copied
    return dict(attributes)


def attributes_dict(attributes: Mapping[str, object] | None) -> dict[str, JsonValue]:
    if not attributes:
        return {}
    return {str(key): json_safe(value) for key, value in attributes.items()}


def iso_from_ns(unix_nanos: int | None) -> str | None:
    """ISO 8601 UTC with `Z` and millisecond precision (truncated, never rounded up past the real instant)."""
    if unix_nanos is None:
        return None
    seconds, millis = divmod(unix_nanos // 1_000_000, 1000)
    text = _SECONDS.get(seconds)
    if text is None:
        # A span's start and end usually fall in different seconds (an agent step lasts seconds), and a batch holds
        # runs that interleave: a one-entry cache re-formatted on most calls (0.55 -> 6.2 us a call, +3 us a span
        # on the benchmark's realistic workload). Cleared when full rather than evicted: a batch's spans span far
        # fewer than _SECONDS_KEPT seconds, and a clear costs one re-format per second after it.
        if len(_SECONDS) >= _SECONDS_KEPT:
            _SECONDS.clear()
        text = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        _SECONDS[seconds] = text
    return text + _MILLIS[millis]  # a table of the thousand endings: half the cost of a format spec


# Formatted seconds by Unix second, shared by every thread that maps (the exporter's sending thread, the gateway's
# worker): a dict's get and set are atomic, two threads formatting the same second store the same text, and a clear
# racing a read only costs that read a re-format.
_SECONDS_KEPT = 256
_SECONDS: dict[int, str] = {}
_MILLIS = tuple(f".{millis:03d}Z" for millis in range(1000))  # divmod by a positive divisor: 0 <= millis < 1000


def parse_json_maybe(value: object) -> JsonValue:
    """Parse a JSON-in-a-string attribute; keep the raw string when it is not JSON."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return _decode(value)
        except (ValueError, RecursionError):
            return value
    return json_safe(value)


def _decode(text: str) -> JsonValue:
    """Parse JSON; raises ValueError when `text` is not JSON.

    pydantic-core's parser (Rust, installed with pydantic) is about 25% faster than the stdlib's on message
    JSON. It refuses what the stdlib decoder accepts and we keep, NaN/Infinity literals (mapped to strings
    while parsing, so the output is strict JSON) and lone surrogate escapes: those go to the stdlib decoder.
    """
    try:
        return pydantic_core.from_json(text, allow_inf_nan=False)
    except ValueError:
        return _DECODER.decode(text)


_NON_FINITE = {"NaN": "NaN", "Infinity": "Infinity", "-Infinity": "-Infinity"}
# One decoder for every call: json.loads with a keyword argument builds a new JSONDecoder each time.
_DECODER = json.JSONDecoder(parse_constant=_NON_FINITE.__getitem__)


def parse_json_loose(value: object) -> JsonValue:
    """Like parse_json_maybe, but also decodes JSON-encoded scalars (MLflow writes '"LLM"' and '"some text"')."""
    if isinstance(value, str) and value[:1] in ('"', "{", "[") and len(value) > 1:
        try:
            return _decode(value)
        except (ValueError, RecursionError):
            return value
    return json_safe(value)


def parse_json_value(value: object) -> JsonValue:
    """A value its writer always JSON-encodes (the AI SDK's `JSON.stringify` of a tool's input and output): any JSON
    value, scalars too (`"sunny"`, `42`, `true`); the raw string when it is not JSON."""
    if isinstance(value, str) and value:
        try:
            return _decode(value)
        except (ValueError, RecursionError):
            return value
    return json_safe(value)


def hex_trace_id(trace_id: int) -> str:
    try:
        return trace_id.to_bytes(16, "big").hex()  # half the cost of a format spec
    except OverflowError:  # negative or wider than 128 bits: no valid id, shown as it is
        return f"{trace_id:032x}"


def hex_span_id(span_id: int) -> str:
    try:
        return span_id.to_bytes(8, "big").hex()
    except OverflowError:
        return f"{span_id:016x}"
