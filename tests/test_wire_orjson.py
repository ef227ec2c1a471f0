"""The JSON encoder (transport/wire.py `_to_json`, behind `encode_json` and `encode_item`): orjson, when installed,
writes exactly pydantic-core's bytes for every value the mapping builds, and what orjson refuses goes to
pydantic-core (then the stdlib) as before. Without orjson the encoder is pydantic-core's, with the same bytes."""

from __future__ import annotations

import enum
import json
import os
import random
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydantic_core
import pytest

from prefactor_otel.mapping import map_span
from prefactor_otel.transport import wire

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SRC = Path(__file__).resolve().parent.parent / "src"
# Every character class a JSON writer treats differently: plain, escaped, control, DEL, non-ASCII, astral, U+2028.
CHARS = ["a", "Z", " ", '"', "\\", "/", "\n", "\t", "\x00", "\x1f", "\x7f", "é", "漢", "😀", "\u2028", "\ufeff"]


class Level(enum.IntEnum):
    HIGH = 3


class Tag(str):
    pass


def _pydantic(value: Any) -> bytes:
    """What the encoder wrote before orjson: pydantic-core, else the stdlib writer."""
    try:
        return pydantic_core.to_json(value, inf_nan_mode="strings")
    except pydantic_core.PydanticSerializationError:
        return wire._ENCODER.encode(value).encode("utf-8", errors="replace")


def _finite_float(rng: random.Random) -> float:
    while True:
        value: float = struct.unpack("d", rng.randbytes(8))[0]
        if value - value == 0.0:  # not NaN, not infinite
            return value


def _scalar(rng: random.Random) -> Any:
    roll = rng.randrange(9)
    if roll == 0:
        return "".join(rng.choice(CHARS) for _ in range(rng.randint(0, 10)))
    if roll == 1:
        return rng.choice([0, 1, -1, 2**31, 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1, rng.randint(-(10**12), 10**12)])
    if roll == 2:
        return _finite_float(rng)
    if roll == 3:
        return rng.choice([0.1, 1.0, -0.0, 1e16, 1e-7, 5e-324, 1.7976931348623157e308, 123.456, 1e21])
    if roll == 4:
        return rng.choice([True, False, None])
    if roll == 5:
        return Level.HIGH
    if roll == 6:
        return Tag("tagged")
    return "".join(rng.choice(CHARS[:3]) for _ in range(rng.randint(0, 30)))


def _tree(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if depth <= 0 or roll < 0.5:
        return _scalar(rng)
    if roll < 0.65:
        return [_tree(rng, depth - 1) for _ in range(rng.randint(0, 4))]
    if roll < 0.7:
        return tuple(_tree(rng, depth - 1) for _ in range(rng.randint(0, 3)))
    return {str(_scalar(rng)) + str(index): _tree(rng, depth - 1) for index in range(rng.randint(0, 5))}


def test_the_encoder_writes_pydantic_cores_bytes_for_mapping_shaped_values() -> None:
    rng = random.Random(22)
    for _ in range(3000):
        value = {"inputs": _tree(rng, 4), "metadata": {"n": _scalar(rng)}}
        assert wire._to_json(value) == _pydantic(value), value
        assert bytes(wire.encode_json(value)) == _pydantic(value)


def test_what_orjson_refuses_is_written_by_the_fallbacks_as_before() -> None:
    refused: list[dict[str, Any]] = [
        {"big": 2**64},  # past 64 bits
        {"keys": {1: "a", 2.5: "b", None: "c"}},  # not strings
        {"surrogate": "a\ud800b"},  # not UTF-8: pydantic-core refuses too, the stdlib writes "?"
        {"deep": json.loads("[" * 300 + "]" * 300)},  # past orjson's 254 levels
    ]
    for value in refused:
        assert wire._to_json(value) == _pydantic(value)
        json.loads(wire._to_json(value))  # strict JSON each time
    assert wire._to_json({"surrogate": "a\ud800b"}) == b'{"surrogate":"a?b"}'


def test_a_non_finite_float_still_gives_strict_json() -> None:
    """The one value orjson writes differently (docs/wire.md, "The JSON encoder"): a non-finite float, which only an
    overflowing number literal in a parsed message puts in a payload, becomes null (pydantic-core: "Infinity")."""
    value = {"inputs": {"x": float("inf"), "y": float("nan")}}
    expected = b'{"inputs":{"x":null,"y":null}}' if wire._ORJSON_DUMPS is not None else _pydantic(value)
    assert wire.encode_json(value) == expected
    assert json.loads(wire.encode_json(value), parse_constant=lambda name: pytest.fail(name)) is not None


def test_the_workloads_payloads_encode_to_pydantic_cores_bytes() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from workload import SpanSource
    finally:
        sys.path.remove(str(BENCHMARKS))
    for workload in ("realistic", "small"):
        for span in SpanSource(seed=3, workload=workload).spans(240):
            record = map_span(span)
            for payload in (record.payload, record.result_payload):
                assert isinstance(payload, dict)
                assert wire.encode_json(payload) == _pydantic(payload)


def test_without_orjson_the_encoder_is_pydantic_cores_with_the_same_bytes() -> None:
    script = (
        "import sys, json; sys.modules['orjson'] = None\n"  # import orjson raises ImportError
        "from prefactor_otel.transport import wire\n"
        "assert wire._ORJSON_DUMPS is None\n"
        "value = json.loads(sys.stdin.read())\n"
        "sys.stdout.write(wire.encode_json(value).decode())\n"
    )
    value = {"inputs": {"messages": [{"role": "user", "content": 'caf\u00e9 "q" \n 😀'}]}, "n": [1, 2.5, None, True]}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps(value), capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.encode() == wire.encode_json(value) == _pydantic(value)
