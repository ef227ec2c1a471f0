"""The span-create encoder's prepared layouts (transport/wire.py `_span_create`) write exactly the bytes of the
one-value-at-a-time writer (`_span_create_each`), on every layout and every string, and its layout cache stays
bounded. (benchmarks/wire_diff.py compares `encode_item` with another commit's on the workloads' real items.)"""

from __future__ import annotations

import json
import random
from typing import Any

import pydantic_core

from prefactor_otel.mapping.values import RawJson
from prefactor_otel.transport import wire

CREATE = "agent_spans/create"
# Every character class the JSON writer treats differently: plain, escaped, control, non-ASCII, astral, surrogate.
ALPHABET = ["a", "Z", "0", "-", ":", ".", '"', "\\", "\n", "\t", "\x00", "\x1f", "\x7f", "é", "漢", "😀", "%", "{", "/"]
KEYS = ("agent_instance_id", "id", "schema_name", "status", "started_at", "finished_at", "parent_span_id", 'k"ey', "ké")


def _text(rng: random.Random, with_surrogate: bool = False) -> str:
    text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 12)))
    if with_surrogate and rng.random() < 0.5:
        text += "\udc80"
    return text


def _value(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.55:
        return (
            "01m982ax6cr1f4hznm4w9p6w1wyvpdnd" if rng.random() < 0.5 else _text(rng, with_surrogate=rng.random() < 0.1)
        )
    if roll < 0.9:
        return RawJson(json.dumps({"n": rng.randint(0, 9), "s": _text(rng)}, ensure_ascii=False).encode())
    return rng.choice([None, 3, {"a": 1}, ["x"]])


def _item(rng: random.Random) -> dict[str, Any]:
    details = {key: _value(rng) for key in rng.sample(KEYS, rng.randint(0, len(KEYS)))}
    head: list[tuple[str, Any]] = [
        ("_type", CREATE),
        ("idempotency_key", _text(rng) if rng.random() < 0.3 else "key-1"),
    ]
    head.insert(rng.randint(0, 2), ("details", details))
    return dict(head)


def test_the_prepared_layouts_write_the_bytes_of_the_one_value_at_a_time_writer() -> None:
    rng = random.Random(22)
    fast = 0
    for _ in range(6000):
        item = _item(rng)
        expected = wire._span_create_each(item, item["details"])
        assert wire._span_create(item, item["details"]) == expected, item
        assert wire._span_create(item, item["details"]) == expected, item  # again, with its layout prepared
        if expected is not None:
            fast += 1
            decoded = json.loads(expected)
            assert decoded["details"].keys() == item["details"].keys()
            assert all(
                decoded["details"][key] == (json.loads(value) if type(value) is RawJson else value)
                for key, value in item["details"].items()
            )
    assert fast > 1000  # most items took a layout (the rest: a value of another type, a lone surrogate)


def test_a_value_of_another_type_than_its_layout_takes_the_general_path() -> None:
    payload = RawJson(b'{"a":1}')
    item = {"_type": CREATE, "idempotency_key": "k", "details": {"id": "s", "payload": payload}}
    first = wire.encode_item(item)
    assert json.loads(first) == {"_type": CREATE, "idempotency_key": "k", "details": {"id": "s", "payload": {"a": 1}}}
    # Same keys, other types: a payload still a dict, an id that is a str subclass, an id that is a number.
    as_dict = {**item, "details": {"id": "s", "payload": {"a": 1}}}
    assert (
        wire.encode_item(as_dict)
        == b'{"_type":"agent_spans/create","idempotency_key":"k","details":{"id":"s","payload":{"a":1}}}'
    )

    class Text(str):
        pass

    subclass = {**item, "details": {"id": Text("s"), "payload": payload}}
    assert wire._span_create(subclass, subclass["details"]) == wire._span_create_each(subclass, subclass["details"])
    number = {**item, "details": {"id": 5, "payload": payload}}
    assert wire._span_create(number, number["details"]) is None
    assert json.loads(wire.encode_item(number))["details"] == {"id": 5, "payload": {"a": 1}}
    assert wire.encode_item(item) == first  # its layout still serves the items it fits


def test_the_layout_cache_stays_bounded_and_exact() -> None:
    wire._LAYOUTS.clear()
    payload = RawJson(b"{}")
    for index in range(wire._LAYOUTS_KEPT * 3):
        details = {f"key{index}": "v", "payload": payload}
        item = {"_type": CREATE, "idempotency_key": "k", "details": details}
        assert wire._span_create(item, details) == wire._span_create_each(item, details)
        assert len(wire._LAYOUTS) <= wire._LAYOUTS_KEPT


def test_the_empty_result_payload_is_the_serializers_bytes_and_look_alikes_are_encoded() -> None:
    from collections import OrderedDict

    empty = {"outputs": {}, "token_usage": None, "error": None}
    assert wire.encode_json(empty) == wire._to_json(empty) and type(wire.encode_json(empty)) is RawJson
    assert wire.encode_json(dict(empty)) is wire.encode_json(empty)  # the one encoded object
    look_alikes = [
        {"token_usage": None, "outputs": {}, "error": None},  # another key order: other bytes
        {"outputs": {"x": 1}, "token_usage": None, "error": None},
        {"outputs": {}, "token_usage": {"prompt_tokens": 1}, "error": None},
        {"outputs": {}, "token_usage": None, "error": {"error_type": "E", "message": None, "stacktrace": None}},
        {"outputs": [], "token_usage": None, "error": None},
        {"outputs": OrderedDict(), "token_usage": None, "error": None},
        {"outputs": {}, "token_usage": None, "error": None, "extra": 1},
        {"outputs": {}, "token_usage": 0, "error": False},
    ]
    for value in look_alikes:
        assert wire.encode_json(value) == wire._to_json(value), value


def test_encoded_payloads_leave_span_creates_untracked_by_the_garbage_collector() -> None:
    """Encoded payloads are plain bytes: a span create's details (strings and payloads) drop out of the collector's
    scans after one collection, as they would not if a payload were an instance of a bytes subclass."""
    import gc

    payload = wire.encode_json({"name": "chat", "inputs": {"text": "hi"}, "n": 1.5})
    result = wire.encode_json({"outputs": {}, "token_usage": None, "error": None})
    assert type(payload) is bytes and type(result) is bytes and not gc.is_tracked(payload)
    details = {"agent_instance_id": "i", "id": "s", "status": "complete", "payload": payload, "result_payload": result}
    item = {"_type": CREATE, "idempotency_key": "k", "details": details}
    gc.collect()
    assert not gc.is_tracked(details)
    decoded = json.loads(wire.encode_item(item))
    assert decoded["details"]["payload"] == {"name": "chat", "inputs": {"text": "hi"}, "n": 1.5}


def _written_before_orjson(item: dict[str, Any]) -> bytes | str:
    """What encode_item wrote before it used orjson: the hand-written span create, else pydantic-core (the stdlib
    for what it refuses) with the payloads decoded."""
    details = item["details"]
    fast = wire._span_create(item, details)
    if fast is not None:
        return fast
    decoded = {key: json.loads(value) if type(value) is bytes else value for key, value in details.items()}
    value = {**item, "details": decoded}
    try:
        return pydantic_core.to_json(value, inf_nan_mode="strings")
    except pydantic_core.PydanticSerializationError:
        try:
            return wire._ENCODER.encode(value).encode("utf-8", errors="replace")
        except ValueError as exc:
            return f"ValueError: {exc}"


def _encoded(item: dict[str, Any]) -> bytes | str:
    try:
        return wire.encode_item(item)
    except ValueError as exc:
        return f"ValueError: {exc}"


def test_encode_item_writes_the_bytes_it_wrote_before_orjson_in_any_key_order() -> None:
    """orjson (when installed) writes a span create in the item's own key order; it takes only the items where
    that order is the hand-written one's (no string after a payload, details last) or where both paths keep the
    item's order (a value of another type): every item, random order, types and strings, the same bytes."""
    rng = random.Random(7)
    in_order = 0
    for index in range(6000):
        item = _item(rng)
        details = item["details"]
        if index % 2:  # half of them in the order pipeline/items.py builds: strings, then payloads, details last
            texts = {key: value for key, value in details.items() if type(value) is not RawJson}
            details = {**texts, **{key: value for key, value in details.items() if type(value) is RawJson}}
            item = {key: value for key, value in item.items() if key != "details"} | {"details": details}
            in_order += all(type(value) in (str, RawJson) for value in details.values())
        assert _encoded(item) == _written_before_orjson(item), item
    assert in_order > 1000


def test_the_orjson_shape_cache_answers_by_value_types_and_never_for_an_item_with_two_dicts() -> None:
    """`encode_item` remembers, per sequence of value types, whether orjson writes the hand path's bytes. Items of
    one shape get one answer whatever their strings; an item with a second dict beside `details` (whose answer
    depends on which dict is which) is never remembered: each is checked, and written as before."""
    payload, result = RawJson(b'{"name":"x"}'), RawJson(b'{"outputs":{}}')
    details = {"id": "01span", "status": "complete", "payload": payload, "result_payload": result}
    wire._ORJSON_SHAPES.clear()
    for text in ("plain", 'quo"te', "naïve", "a\udc80b"):
        item = {"_type": CREATE, "idempotency_key": text, "details": {**details, "id": text}}
        assert _encoded(item) == _written_before_orjson(item), item
    assert len(wire._ORJSON_SHAPES) == 1 and all(wire._ORJSON_SHAPES.values())
    reordered = {"_type": CREATE, "details": {**details}, "idempotency_key": "k"}  # details not last
    assert _encoded(reordered) == _written_before_orjson(reordered)
    shape = (*map(type, reordered.values()), str, str, RawJson, RawJson)
    assert len(wire._ORJSON_SHAPES) == 2 and wire._ORJSON_SHAPES[shape] is False
    if wire._ORJSON_DUMPS is None:
        return
    shared = {**details}
    twice = {"copy": shared, "details": shared}  # one dict twice, `details` last: orjson wrote it, and still does
    other = {"copy": {**details}, "details": {**details}}  # two dicts: the general path, as before
    for _ in range(2):
        assert _encoded(twice) == wire._ORJSON_DUMPS(twice, default=wire._ORJSON_FRAGMENT)
        assert _encoded(other) == _written_before_orjson(other)
    assert len(wire._ORJSON_SHAPES) == 2
