"""`Redactor.redact_owned`'s shortcuts (mapping/redaction.py): a string array whose items the text cache says stay
as they are keeps its tuple, with the same values and log as the full walk (`_nested`) gives, whatever the items
(secrets, key lines, long strings, numbers, other types); and the length it returns is the longest string the
attributes hold afterwards, which the mapping's length limits rely on (payload._longest_string's answer)."""

from __future__ import annotations

import random
from typing import Any

from prefactor_otel.mapping.payload import _longest_string
from prefactor_otel.mapping.redaction import Redactor

KEY_LINE = (
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKjMzEfYyjiWA4R4/M2bS1GB4t7NXp98C3S"
    "C6dVMvDuictGeurT8jNbvJZHtCSuYEvuNMoSfm76oqFvAp8Gy0iz5sxjZmSnXyCdPEovGhLa0VzMaQ8s+CLOyS56YyCFGeJZ"
)[:64]
ITEMS: tuple[Any, ...] = (
    "stop",
    "tool_call",
    "gpt-4o",
    "ok",
    "",
    "sk-abcdefghijklmnopqrstuvwx",
    "Bearer abcdefghijklmnop",
    "password=hunter22",
    KEY_LINE,
    KEY_LINE.swapcase(),
    "x" * 70,
    "y" * 200,
    "a long text " * 20 + "sk-abcdefghijklmnopqrstuvwx",
    1,
    2.5,
    True,
    None,
    b"bytes sk-abcdefghijklmnopqrstuvwx",
    ("nested",),
)
KEYS = ("gen_ai.response.finish_reasons", "tags", "user.password", "auth", "items", "signature")


def _attributes(rng: random.Random) -> dict[str, object]:
    attributes: dict[str, object] = {}
    for key in rng.sample(KEYS, rng.randint(1, len(KEYS))):
        roll = rng.random()
        if roll < 0.6:
            attributes[key] = tuple(rng.choice(ITEMS) for _ in range(rng.randint(0, 4)))
        elif roll < 0.8:
            attributes[key] = rng.choice([item for item in ITEMS if isinstance(item, str)])
        else:
            attributes[key] = [rng.choice(ITEMS) for _ in range(rng.randint(0, 3))]
    return attributes


def test_unchanged_string_arrays_keep_their_tuple_and_give_what_the_full_walk_gives() -> None:
    rng = random.Random(7)
    redactor = Redactor(keys=("items",))
    kept = 0
    for _ in range(3000):
        attributes = _attributes(rng)
        original = dict(attributes)
        log: list[dict[str, Any]] = []
        redactor.redact_owned(attributes, "attributes", log)
        expected: list[dict[str, Any]] = []
        for key, value in original.items():
            if isinstance(value, (tuple, list)) and redactor.key_rule(key) is None:
                walked = redactor._nested(value, f'attributes["{key}"]', expected, 0)
                assert attributes[key] == walked and type(attributes[key]) is type(walked), (key, value)
                kept += attributes[key] is value
            else:
                single = {key: value}
                redactor.redact_owned(single, "attributes", expected)
                assert attributes[key] == single[key]
        assert log == expected
    assert kept > 500  # the shortcut was taken often


def test_the_length_returned_is_the_longest_string_left() -> None:
    rng = random.Random(8)
    for redactor in (Redactor(), Redactor(keys=("items",), patterns=("ok",)), Redactor(callback=lambda p, v: v * 2)):
        for _ in range(2000):
            attributes = _attributes(rng)
            longest = redactor.redact_owned(attributes, "attributes", [])
            assert longest == _longest_string(attributes)
