import csv
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
