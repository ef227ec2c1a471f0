"""Pure parts of the transport: chunking and Retry-After parsing."""

import gzip
import json

import pytest

from prefactor_otel.transport.answers import (
    MAX_RESPONSE_BYTES,
    ResponseTooLarge,
    UnreadableResponse,
    decode_body,
    environment_proxy,
    parse_retry_after,
)
from prefactor_otel.transport.client import bulk_body, chunk_encoded, encode_item, encode_json


def _items(sizes):
    return [encode_item({"_type": "t", "idempotency_key": f"key-{i:05d}", "pad": "x" * n}) for i, n in enumerate(sizes)]


def test_chunks_respect_item_and_byte_limits_and_keep_order():
    encoded = _items([100] * 10)
    chunks = chunk_encoded(encoded, max_items=3, max_bytes=10_000)
    assert [len(c) for c in chunks] == [3, 3, 3, 1]
    assert [i for c in chunks for i in c] == list(range(10))
    one = len(bulk_body(encoded[:1]))
    chunks = chunk_encoded(encoded, max_items=100, max_bytes=one * 2)
    for c in chunks:
        assert len(bulk_body([encoded[i] for i in c])) <= one * 2
    assert sum(len(c) for c in chunks) == 10


def test_oversized_item_goes_alone():
    encoded = _items([10, 5000, 10])
    chunks = chunk_encoded(encoded, max_items=100, max_bytes=1000)
    assert [list(c) for c in chunks] == [[0], [1], [2]]


def test_bulk_body_is_valid_json():
    encoded = _items([1, 2])
    assert len(json.loads(bulk_body(encoded))["items"]) == 2


def test_retry_after_forms():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-4") == 0.0
    http_date = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert parse_retry_after(http_date, now_wall=1445412470.0) == 10.0


def test_non_ascii_is_utf8_not_escaped():
    encoded = encode_item({"_type": "t", "idempotency_key": "12345678", "s": "漢字"})
    assert "漢字".encode() in encoded


def test_lone_surrogates_are_replaced_not_fatal():
    encoded = encode_item({"_type": "t", "idempotency_key": "12345678", "s": "a\udc80b"})
    assert json.loads(encoded)["s"] == "a?b"


def test_register_items_encode_the_shared_schema_once_and_identically():
    schema = {"external_identifier": "x", "span_type_schemas": [{"name": "otel:span", "params_schema": {}}]}
    item = {"_type": "agent_instances/register", "idempotency_key": "12345678", "agent_schema_version": schema}
    first = encode_item(item)
    assert json.loads(first) == item
    assert encode_item(dict(item)) == first  # the same bytes on a retry: the idempotent replay depends on it


def test_payloads_encoded_at_mapping_are_embedded_as_they_are():
    payload = {"span_id": "ab", "inputs": {"messages": [{"role": "user", "content": 'héllo "quoted"'}]}, "x": 1.5}
    details = {"id": "s", "payload": encode_json(payload), "status": "complete", "result_payload": encode_json({})}
    item = {"_type": "agent_spans/create", "idempotency_key": "12345678", "details": details}
    decoded = json.loads(encode_item(item))
    assert decoded == {
        "_type": "agent_spans/create",
        "idempotency_key": "12345678",
        "details": {"id": "s", "status": "complete", "payload": payload, "result_payload": {}},
    }
    assert json.loads(encode_item({"details": {"payload": encode_json(payload)}})) == {"details": {"payload": payload}}


def test_string_details_take_the_direct_path_and_match_the_general_encoder():
    details = {"id": 'q"uo\\te\n', "name": "naïve", "payload": encode_json({"a": 1}), "result_payload": encode_json({})}
    item = {"_type": "agent_spans/create", "idempotency_key": "12345678", "details": details}
    decoded = json.loads(encode_item(item))
    assert decoded["details"] == {"id": 'q"uo\\te\n', "name": "naïve", "payload": {"a": 1}, "result_payload": {}}
    assert "naïve".encode() in encode_item(item)  # UTF-8, not escaped
    lone = {**item, "details": {**details, "name": "a\udc80b"}}
    assert json.loads(encode_item(lone))["details"]["name"] == "a?b"  # the general path's replacement
    mixed = {**item, "details": {**details, "n": 3, "none": None}}
    assert json.loads(encode_item(mixed))["details"]["n"] == 3


def test_the_proxy_from_the_environment_still_applies(monkeypatch):
    # The client is built on our own transport (for the deadline-aware network layer), which makes httpx ignore
    # the proxy variables: the transport picks the one for the API URL itself.
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert environment_proxy("https://app.prefactorai.com") is None
    monkeypatch.setenv("HTTPS_PROXY", "proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,.corp.example")
    assert environment_proxy("https://app.prefactorai.com") == "http://proxy.internal:3128"
    assert environment_proxy("https://api.corp.example") is None
    assert environment_proxy("http://localhost:8787") is None  # and HTTP_PROXY is unset


def test_a_compressed_answer_inflates_only_up_to_the_cap():
    assert decode_body(gzip.compress(b'{"a":1}'), "gzip") == b'{"a":1}'
    assert decode_body(b"plain", None) == b"plain"
    bomb = gzip.compress(b" " * (MAX_RESPONSE_BYTES + 1))  # ~8 KB on the wire
    with pytest.raises(ResponseTooLarge):
        decode_body(bomb, "gzip")
    with pytest.raises(UnreadableResponse):
        decode_body(b"x", "br")
