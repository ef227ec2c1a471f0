import csv
import hashlib
import random
from pathlib import Path

import pytest

from prefactor_otel.model import ids

FIXTURES = Path(__file__).parent / "fixtures" / "pfid_fixtures.csv"


def _rows():
    with FIXTURES.open() as fh:
        return list(csv.DictReader(fh))


def test_fixture_table_is_large():
    assert len(_rows()) > 1000


@pytest.mark.parametrize("row", _rows()[::7], ids=lambda r: r["pfid"])
def test_encode_matches_public_fixtures(row):
    ts, part, rand = int(row["timestamp"]), int(row["partition"]), int(row["randomness_hex"], 16)
    assert ids.encode(ts, part, rand) == row["pfid"]
    assert ids.decode(row["pfid"]) == (ts, part, rand)
    assert ids.is_pfid(row["pfid"])


def test_all_fixtures_round_trip():
    for row in _rows():
        ts, part, rand = int(row["timestamp"]), int(row["partition"]), int(row["randomness_hex"], 16)
        assert ids.encode(ts, part, rand) == row["pfid"]
        binary = ts.to_bytes(6, "big") + part.to_bytes(4, "big") + rand.to_bytes(10, "big")
        assert ids.encode_binary(binary) == row["pfid"]


def test_doc_example_decodes_to_known_values():
    example = ids.encode(1_234_567_890_000, 123_456_789, 0)
    assert example.startswith("013xrzp12g3nqk8n")
    assert ids.extract_partition(example) == 123_456_789
    assert ids.timestamp_of(example) == 1_234_567_890_000


@pytest.mark.parametrize(
    "value",
    [
        "",
        "8" + "0" * 31,  # first char carries only 3 bits
        "0" * 31,
        "0" * 33,
        "0" * 31 + "u",  # u is not in Crockford's alphabet
        "0" * 31 + "A",  # upper case is not canonical
        None,
        123,
    ],
)
def test_is_pfid_rejects(value):
    assert not ids.is_pfid(value)


def test_decode_tolerates_upper_case_like_pfid():
    pfid = ids.encode(1, 2, 3)
    assert ids.decode(pfid.upper()) == (1, 2, 3)


def test_decode_rejects_values_past_158_bits():
    with pytest.raises(ids.PfidError):
        ids.decode("8" + "0" * 31)


def test_binary_partition_padding_must_be_zero():
    with pytest.raises(ids.PfidError):
        ids.encode_binary(bytes(6) + b"\xc0" + bytes(13))


def test_encode_rejects_out_of_range():
    with pytest.raises(ids.PfidError):
        ids.encode(-1, 0, 0)
    with pytest.raises(ids.PfidError):
        ids.encode(0, ids.MAX_PARTITION + 1, 0)
    with pytest.raises(ids.PfidError):
        ids.encode(0, 0, ids.MAX_RANDOMNESS + 1)


def test_span_ids_are_deterministic_and_carry_partition_and_time():
    a = ids.span_pfid(42, 0xABC, 0x123, 1_700_000_000_123_456_789)
    b = ids.span_pfid(42, 0xABC, 0x123, 1_700_000_000_123_456_789)
    c = ids.span_pfid(42, 0xABC, 0x124, 1_700_000_000_123_456_789)
    assert a == b != c
    assert ids.is_pfid(a)
    assert ids.extract_partition(a) == 42
    assert ids.timestamp_of(a) == 1_700_000_000_123


def test_instance_ids_differ_per_agent_and_trace():
    a = ids.instance_pfid(7, "agent-a", 1, 10**18)
    assert a == ids.instance_pfid(7, "agent-a", 1, 10**18)
    assert a != ids.instance_pfid(7, "agent-b", 1, 10**18)
    assert a != ids.instance_pfid(7, "agent-a", 2, 10**18)


def test_idempotency_keys_are_stable_and_in_bounds():
    span = ids.span_pfid(5, 1, 2, 0)
    variants = ("", "orphan", "placeholder", "orphanplaceholder")
    keys = {ids.idempotency_key_for_id("agent_spans/create", span, variant) for variant in variants}
    assert len(keys) == 4  # every body variant of one span has its own key
    assert all(ids.IDEMPOTENCY_KEY_MIN <= len(k) <= ids.IDEMPOTENCY_KEY_MAX for k in keys)
    other_span = ids.span_pfid(5, 1, 3, 0)
    assert ids.idempotency_key_for_id("agent_spans/create", span) != ids.idempotency_key_for_id(
        "agent_spans/create", other_span
    )
    k1 = ids.idempotency_key("agent_spans/create", "t", "s")
    assert k1 == ids.idempotency_key("agent_spans/create", "t", "s")
    assert k1 != ids.idempotency_key("agent_spans/create", "t", "s2")
    assert k1 != ids.idempotency_key("agent_instances/start", "t", "s")
    assert 8 <= len(k1) <= 64


def _span_pfid_by_definition(partition: int, trace_id: int, span_id: int, start_time_ns: int | None) -> str:
    """What span_pfid is defined as (and computed as before its caches): encode(clamped ms, partition, hash)."""
    text = f"span\x1f{trace_id:032x}\x1f{span_id:016x}".encode()
    randomness = int.from_bytes(hashlib.blake2b(text, digest_size=10).digest(), "big")
    ms = 0 if start_time_ns is None or start_time_ns < 0 else min(start_time_ns // 1_000_000, ids.MAX_TIMESTAMP)
    return ids.encode(ms, partition, randomness)


def test_span_pfid_is_its_definition_on_random_and_edge_inputs() -> None:
    # Its caches (the last trace's hasher, timestamp tops, partitions) must never change an id: traces
    # interleaved and repeated, partitions alternating, times in the same and in other 1,024 ms, edges of each part.
    rng = random.Random(22)
    traces = [rng.getrandbits(128) for _ in range(50)] + [0, 1, (1 << 128) - 1]
    starts = [None, -1, 0, 1, 999_999, 1_000_000, (1 << 48) * 1_000_000, (1 << 48) * 1_000_000 - 1, 1 << 70]
    for i in range(20_000):
        partition = rng.choice((0, 1, ids.MAX_PARTITION, 123_456)) if i % 3 else rng.randrange(1 << 30)
        trace_id = rng.choice(traces)
        span_id = rng.choice((0, 1, (1 << 64) - 1)) if i % 17 == 0 else rng.getrandbits(64)
        start = rng.choice(starts) if i % 7 == 0 else 1_765_000_000_000_000_000 + rng.randrange(10**13)
        assert ids.span_pfid(partition, trace_id, span_id, start) == _span_pfid_by_definition(
            partition, trace_id, span_id, start
        )
        if i % 5:  # the same trace again: its hasher from the cache
            other = rng.getrandbits(64)
            assert ids.span_pfid(partition, trace_id, other, start) == _span_pfid_by_definition(
                partition, trace_id, other, start
            )


@pytest.mark.parametrize("partition", [-1, ids.MAX_PARTITION + 1, 1 << 40])
def test_span_and_instance_pfids_reject_a_partition_out_of_range(partition: int) -> None:
    for _ in range(2):  # twice: a refused partition is not cached
        with pytest.raises(ids.PfidError):
            ids.span_pfid(partition, 1, 2, 0)
        with pytest.raises(ids.PfidError):
            ids.instance_pfid(partition, "deployment", 1, 0)


def test_instance_pfid_is_its_definition_across_agent_keys() -> None:
    # The cached hasher of the last agent key must never leak into another key's ids: keys alternate and repeat.
    rng = random.Random(23)
    keys = ["deployment", "agent-1\x1fpart\x1fab12", "agent-1\x1fpart\x1fab12\x1f2", "é-ünïcode", ""]
    for i in range(3_000):
        key = rng.choice(keys)
        trace_id = rng.choice((0, (1 << 128) - 1)) if i % 13 == 0 else rng.getrandbits(128)
        start = rng.choice((None, -1, 0, 1 << 70)) if i % 7 == 0 else 1_765_000_000_000_000_000 + rng.randrange(10**12)
        partition = rng.randrange(1 << 30)
        assert ids.instance_pfid(partition, key, trace_id, start) == _instance_pfid_by_definition(
            partition, key, trace_id, start
        )


def _instance_pfid_by_definition(partition: int, agent_key: str, trace_id: int, start_time_ns: int | None) -> str:
    text = f"instance\x1f{agent_key}\x1f{trace_id:032x}".encode()
    randomness = int.from_bytes(hashlib.blake2b(text, digest_size=10).digest(), "big")
    ms = 0 if start_time_ns is None or start_time_ns < 0 else min(start_time_ns // 1_000_000, ids.MAX_TIMESTAMP)
    return ids.encode(ms, partition, randomness)


def test_id_caches_start_empty_for_any_first_key() -> None:
    # A fresh process's first id, whatever its trace or agent key (even "" or a negative test id), is computed.
    import subprocess
    import sys

    code = (
        "from prefactor_otel.model import ids; "
        "print(ids.instance_pfid(1, '', 5, 0), ids.span_pfid(1, -1, 2, 0), ids.span_pfid(1, 0, 2, 0))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == _instance_pfid_by_definition(1, "", 5, 0)
    assert out[2] == _span_pfid_by_definition(1, 0, 2, 0)
    assert ids.is_pfid(out[1])
