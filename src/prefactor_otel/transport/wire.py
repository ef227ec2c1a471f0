"""The wire form of bulk items: compact JSON encoding, bulk request bodies, chunking, and the REST form of an item.

Pure functions; the module state is three small bounded caches, plain dicts without a lock: the encoded schema
sets (`_encoded_once`), read and written by the one sender thread at a time (the exporter's send lock), and the
span-create layouts (`_LAYOUTS`) and value-type shapes orjson may write (`_ORJSON_SHAPES`), which any encoding thread
(the exporter's sender, the gateway's worker) reads and fills; a race there only prepares an entry twice. JSON is
written by orjson (a dependency; without it the other encoders write the same bytes, slower), where it writes the
bytes the other encoders would (pydantic-core, the stdlib, the hand-written span create): docs/wire.md, "The JSON
encoder". The encoder itself (`encode_json`, `_to_json`) is mapping/values.py's, named here too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from json.encoder import encode_basestring as _json_string  # C: quotes and escapes one str
from operator import itemgetter
from typing import Any, NamedTuple

from prefactor_otel.mapping import values
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
        if _ORJSON_DUMPS is not None:
            # orjson writes the item in its own key order, a payload (bytes: no JSON type to orjson, so `default`
            # makes it a Fragment) embedded as it is. Taken only where that is the hand-written span create's
            # bytes (below), which depends on the types of the values in order alone (`_orjson_writes_the_same`):
            # told once per shape, then by one lookup of the value types (C calls, where the checks in Python cost
            # ~0.4 us per span create). A lone surrogate makes orjson refuse: the paths below take it. 2.9 -> 0.9
            # us per span create, isolated (docs/wire.md).
            shape = (*map(type, item.values()), *map(type, details.values()))
            same = _ORJSON_SHAPES.get(shape)
            if same is None:
                same = _orjson_writes_the_same(item, details)
                if shape.count(dict) == 1:  # (with another dict, the answer depends on which one is `details`)
                    if len(_ORJSON_SHAPES) >= _LAYOUTS_KEPT:
                        _ORJSON_SHAPES.clear()  # more shapes than the items have: start over rather than grow
                    _ORJSON_SHAPES[shape] = same
            if same:
                try:
                    return _ORJSON_DUMPS(item, default=_ORJSON_FRAGMENT)
                except TypeError:
                    pass
        fast = _span_create(item, details)
        if fast is not None:
            return fast
        if any(type(value) is RawJson for value in details.values()):
            # Rare (a value neither string nor payload, or not UTF-8): decode the payloads, encode it all as usual.
            details = {key: as_dict(value) if type(value) is RawJson else value for key, value in details.items()}
            return _to_json({**item, "details": details})
    return _to_json(item)


def _orjson_writes_the_same(item: dict[str, Any], details: dict[str, Any]) -> bool:
    """Whether orjson's bytes of this item (payloads as Fragments) are the hand-written span create's: every value a
    string or a payload, `details` last and ending with a payload, no string after a payload (pipeline/items.py
    builds span creates so). Where `details` is the one dict among the item's values and its own values, the answer
    depends on the types of the values in order alone, so every item whose value types are these, in this order,
    gets the same answer (`_ORJSON_SHAPES` keeps it)."""
    if next(reversed(item)) != "details" or type(next(reversed(details.values()), None)) is not bytes:
        return False
    payloads = False
    for value in details.values():
        if type(value) is bytes:
            payloads = True
        elif payloads or type(value) is not str:
            return False
    return all(type(value) is str or value is details for value in item.values())


def _span_create(item: dict[str, Any], details: dict[str, Any]) -> bytes | None:
    """An item with `details` (a span create) whose values are strings (ids, times, names) and encoded payloads,
    written without a serializer call: for objects this small the call costs more than the work. None when a value
    is of another type or cannot be UTF-8: the general path takes it.

    The bytes are `_span_create_each`'s. Span creates come in a handful of key layouts (finished or live, with or
    without a parent), so each layout's fixed text (the keys, quotes, commas) is prepared once (`_CreateLayout`) and
    a create costs a few C-level calls: its values gathered, the text joined and encoded once, one check that no
    value needs a JSON escape (ids, times, names and enum values never do). Anything else (a value to escape, a
    value of another type than the layout's, a key that is not a plain string) is written by `_span_create_each`.
    2.65 -> 1.75 us per span create, isolated (benchmarks/wire_diff.py compares bytes and time with a commit).
    """
    shape = (tuple(item), tuple(details))
    layout = _LAYOUTS.get(shape)
    if layout is None:
        layout = _create_layout(item, details)
        if layout is None:
            return _span_create_each(item, details)
        if len(_LAYOUTS) >= _LAYOUTS_KEPT:
            _LAYOUTS.clear()  # more layouts than the items have: start over rather than grow
        _LAYOUTS[shape] = layout
    texts = layout.head_values(item) + layout.text_values(details)
    for value in texts:
        if type(value) is not str:
            return _span_create_each(item, details)
    raws = layout.raw_values(details)
    for raw in raws:
        if type(raw) is not RawJson:
            return _span_create_each(item, details)
    text = layout.text.copy()
    text[1::2] = texts
    try:
        head = "".join(text).encode()
    except UnicodeEncodeError:
        return None
    # A value needing an escape adds a quote, a backslash or a control character to the layout's own.
    if len(head) - len(head.translate(None, _ESCAPED)) != layout.escaped:
        return _span_create_each(item, details)
    body = layout.tail.copy()
    body[0] = head
    body[2::2] = raws
    return b"".join(body)


class _CreateLayout(NamedTuple):
    """The fixed parts of one span-create key layout: `text` alternates the layout's text with slots for the
    string values (`head_values` of the item, then `text_values` of its details); `escaped` counts the quotes,
    backslashes and control characters of that text; `tail` alternates a slot for the encoded text, each encoded
    payload's `"key":` and a slot for the payload (`raw_values`), and the closing braces."""

    head_values: Callable[[dict[str, Any]], tuple[Any, ...]]
    text_values: Callable[[dict[str, Any]], tuple[Any, ...]]
    raw_values: Callable[[dict[str, Any]], tuple[Any, ...]]
    text: list[str]
    escaped: int
    tail: list[bytes]


def _create_layout(item: dict[str, Any], details: dict[str, Any]) -> _CreateLayout | None:
    """The layout of this item's keys, each details value a string or a payload as it is in this item; None when a
    key is not a string, a details value neither, or a key cannot be UTF-8 (`_span_create_each` then writes it)."""
    if any(type(key) is not str for key in item) or any(type(key) is not str for key in details):
        return None
    head_keys = [key for key in item if key != "details"]
    text_keys = [key for key, value in details.items() if type(value) is str]
    raw_keys = [key for key, value in details.items() if type(value) is RawJson]
    if len(text_keys) + len(raw_keys) != len(details):
        return None
    heads = len(head_keys)
    text: list[str] = []
    for index, key in enumerate(head_keys + text_keys):
        before = "{" if index == 0 else '",'
        if index == heads:
            before += '"details":{'
        text += (f'{before}{_json_string(key)}:"', "")  # the key, then a slot for its value
    if not text:
        text.append('{"details":{')
    else:
        text.append('"' if text_keys else '","details":{')
    tail: list[bytes] = [b""]  # a slot for the encoded text, then each payload's key and a slot for it
    separator = "," if text_keys else ""
    try:
        fixed = "".join(text).encode()
        for key in raw_keys:
            tail += (f"{separator}{_json_string(key)}:".encode(), b"")
            separator = ","
    except UnicodeEncodeError:
        return None
    tail.append(b"}}")
    escaped = len(fixed) - len(fixed.translate(None, _ESCAPED))
    return _CreateLayout(_values_of(head_keys), _values_of(text_keys), _values_of(raw_keys), text, escaped, tail)


def _values_of(keys: list[str]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """A C-level getter of these keys' values, always as a tuple (itemgetter of one key returns the value)."""
    if len(keys) == 1:
        key = keys[0]
        return lambda mapping: (mapping[key],)
    if not keys:
        return lambda mapping: ()
    return itemgetter(*keys)


# JSON strings escape a quote, a backslash and the control characters; UTF-8 never hides these bytes inside another
# character's encoding, so counting them in the encoded text finds any value that needed an escape.
_ESCAPED = bytes(range(0x20)) + b'"\\'
_LAYOUTS_KEPT = 64
# Span-create layouts by (item keys, details keys): read and filled by whichever thread encodes (the exporter's
# sender, the gateway's worker) without a lock: a plain dict, and a race only builds a layout twice.
_LAYOUTS: dict[tuple[tuple[str, ...], tuple[str, ...]], _CreateLayout] = {}
# Whether orjson writes an item as the hand path would, by the types of its values then of its details' values, in
# order (`_orjson_writes_the_same`): filled and read like _LAYOUTS, by whichever thread encodes, without a lock.
_ORJSON_SHAPES: dict[tuple[type, ...], bool] = {}


def _span_create_each(item: dict[str, Any], details: dict[str, Any]) -> bytes | None:
    """`_span_create` one value at a time, each escaped as JSON needs: any key layout, any string. Its bytes are
    the definition `_span_create`'s fast path keeps (strings first, in order, then the encoded payloads; 5.9 -> 4.2
    us per span create against a serializer call). None when a value is neither a string nor an encoded payload, or
    cannot be UTF-8: the general path takes it."""
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


# The JSON encoder lives in mapping/values.py (the mapping encodes payloads as it maps them); these are its names
# here, where the send path and its tests have always found them.
encode_json = values.encode_json
_to_json = values.to_json
_NO_RESULT = values.NO_RESULT
_ORJSON_DUMPS = values.ORJSON_DUMPS
_ORJSON_FRAGMENT = values.ORJSON_FRAGMENT
_ENCODER = values._ENCODER  # the stdlib fallback (tests compare against it)
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
