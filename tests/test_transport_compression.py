"""Compressed request bodies against the real local server: what is sent, what a server that refuses an encoding
makes the exporter do (fall back zstd -> gzip -> none, counted, logged once, nothing lost or sent twice), the
server's own bounds on compressed bodies (a bomb gets 413, an encoding it does not take 415), and the spool, which
stays plain JSON whatever goes on the wire.
"""

from __future__ import annotations

import gzip
import json
import logging
import ssl
from collections import Counter
from pathlib import Path

import httpx
import pytest
import zstandard
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from prefactor_otel import PrefactorSpanExporter
from prefactor_otel.config.options import ConfigError, PrefactorConfig
from prefactor_otel.devserver import DevServer, Fault
from prefactor_otel.transport import tls
from prefactor_otel.transport.compression import MIN_COMPRESS_BYTES
from tests.spans import agent_trace, exporter_for, make_provider, wait_for

BULK = "/api/v1/bulk"


def traces(count: int = 3) -> list[ReadableSpan]:
    provider, collector = make_provider()
    for _ in range(count):
        agent_trace(provider)
    return collector.spans


def bulk_requests(srv: DevServer) -> list:  # type: ignore[type-arg]
    return [r for r in srv.requests if r.path == BULK]


def assert_each_span_once(srv: DevServer, spans: list[ReadableSpan]) -> None:
    stored = Counter((s["payload"]["trace_id"], s["payload"]["span_id"]) for s in srv.spans())
    expected = {(f"{s.context.trace_id:032x}", f"{s.context.span_id:016x}") for s in spans}
    assert set(stored) == expected and set(stored.values()) == {1}


def export_and_finish(exporter: PrefactorSpanExporter, spans: list[ReadableSpan]) -> None:
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter.shutdown()


# ------------------------------------------------------------------ what is sent


@pytest.mark.parametrize(("setting", "encoding"), [(None, "zstd"), ("zstd", "zstd"), ("gzip", "gzip")])
def test_bodies_go_compressed_and_the_server_stores_every_span_once(setting, encoding):
    spans = traces()
    with DevServer() as srv:
        exporter = exporter_for(srv, **({"compression": setting} if setting else {}))
        export_and_finish(exporter, spans)
        assert_each_span_once(srv, spans)
        assert all(i["status"] == "complete" for i in srv.instances())
        requests = bulk_requests(srv)
        assert requests and all(r.status == 200 for r in requests)
        big = [r for r in requests if (r.decoded_bytes or r.request_bytes) >= MIN_COMPRESS_BYTES]
        assert big and all(r.encoding == encoding and r.decoded_bytes > r.request_bytes for r in big)
        small = [r for r in requests if r not in big]
        assert all(r.encoding == "identity" and r.decoded_bytes is None for r in small)
        stats = exporter.stats()
        assert stats["bytes_sent"] < stats["bytes_uncompressed"] / 3
        assert stats["compression_refused"] == {}


def test_none_sends_plain_json():
    spans = traces(1)
    with DevServer() as srv:
        export_and_finish(exporter_for(srv, compression="none"), spans)
        assert_each_span_once(srv, spans)
        assert {r.encoding for r in bulk_requests(srv)} == {"identity"}


def test_the_option_is_checked_and_read_from_its_alias():
    assert PrefactorConfig.load({"OTEL_EXPORTER_PREFACTOR_COMPRESSION": " GZIP "}).compression == "gzip"
    assert PrefactorConfig.load({"PREFACTOR_COMPRESSION": "none"}).compression == "none"
    assert PrefactorConfig.load({}).compression is None
    with pytest.raises(ConfigError, match="PREFACTOR_COMPRESSION: expected zstd, gzip or none, got 'br'"):
        PrefactorConfig.load({"PREFACTOR_COMPRESSION": "br"})
    exporter = PrefactorSpanExporter(environ={"PREFACTOR_COMPRESSION": "deflate"}, api_token="pf_x")
    assert not exporter.enabled and "PREFACTOR_COMPRESSION" in repr(exporter)


# ------------------------------------------------------------------ learned fallbacks


def test_a_server_refusing_zstd_gets_gzip_counted_and_logged_once(caplog):
    caplog.set_level(logging.INFO, logger="prefactor_otel")
    first, second = traces(), traces()
    with DevServer(refuse_encodings={"zstd"}) as srv:
        exporter = exporter_for(srv)
        assert exporter.export(first) is SpanExportResult.SUCCESS
        assert exporter.export(second) is SpanExportResult.SUCCESS
        exporter.shutdown()
        assert_each_span_once(srv, first + second)
        requests = bulk_requests(srv)
        refused = [r for r in requests if r.status == 415]
        assert [r.encoding for r in refused] == ["zstd"]  # once: every later request goes gzip
        assert requests[0].status == 415 and requests[1].encoding == "gzip" and requests[1].status == 200
        assert {r.encoding for r in requests[1:]} <= {"gzip", "identity"}
        stats = exporter.stats()
        assert stats["compression_refused"] == {"zstd": 1}
        assert stats["requests_by_outcome"]["http_415"] == 1 and stats["retries"] == 0
        lines = [r.getMessage() for r in caplog.records if "refuses zstd" in r.getMessage()]
        assert lines == ["Prefactor: the server refuses zstd request bodies (HTTP 415); sending gzip from now on"]


def test_a_server_refusing_both_gets_plain_json_with_one_warning(caplog):
    caplog.set_level(logging.INFO, logger="prefactor_otel")
    spans = traces()
    with DevServer(refuse_encodings={"zstd", "gzip"}) as srv:
        exporter = exporter_for(srv)
        export_and_finish(exporter, spans)
        assert_each_span_once(srv, spans)
        assert [(r.status, r.encoding) for r in bulk_requests(srv)[:3]] == [
            (415, "zstd"),
            (415, "gzip"),
            (200, "identity"),
        ]
        stats = exporter.stats()
        assert stats["compression_refused"] == {"zstd": 1, "gzip": 1}
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "refuses" in r.getMessage()]
        assert [r.getMessage() for r in warnings] == [
            "Prefactor: the server refuses gzip request bodies (HTTP 415); sending them uncompressed from now on"
        ]


@pytest.mark.parametrize("status", [400, 422])
def test_a_400_to_a_compressed_body_is_asked_again_uncompressed_and_then_learned(caplog, status):
    """A server (or a proxy) that does not read Content-Encoding parses the compressed bytes as JSON: 400. The same
    request sent uncompressed is taken, so the encoding is what it refused: one step down the ladder."""
    caplog.set_level(logging.INFO, logger="prefactor_otel")
    spans, later = traces(), traces()
    with DevServer() as srv:
        srv.add_fault(Fault(status=status, times=1))  # the first bulk request only, whatever its encoding
        exporter = exporter_for(srv)
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        export_and_finish(exporter, later)
        assert_each_span_once(srv, spans + later)
        requests = bulk_requests(srv)
        assert [(r.status, r.encoding) for r in requests[:2]] == [(status, "zstd"), (200, "identity")]
        assert {r.encoding for r in requests[2:]} <= {"gzip", "identity"} and requests[2:]
        stats = exporter.stats()
        assert stats["compression_refused"] == {"zstd": 1} and stats["retries"] == 0


def test_a_400_the_plain_body_gets_too_is_the_request_not_the_encoding():
    spans = traces(1)
    with DevServer() as srv:
        srv.add_fault(Fault(status=400, times=2))
        exporter = exporter_for(srv)
        exporter.export(spans)
        requests = bulk_requests(srv)
        assert [(r.status, r.encoding) for r in requests[:2]] == [(400, "zstd"), (400, "identity")]
        assert exporter.stats()["compression_refused"] == {}
        srv.clear_requests()
        exporter.export(traces(1))
        exporter.shutdown()
        assert any(r.encoding == "zstd" and r.status == 200 for r in bulk_requests(srv))


def test_the_spool_stays_plain_json_and_replays_through_the_fallback(tmp_path: Path):
    spans = traces()
    with DevServer(refuse_encodings={"zstd"}) as srv:
        srv.add_fault(Fault(drop_connection=True, times=-1))
        exporter = exporter_for(srv, spool_dir=str(tmp_path), export_timeout=1)
        assert exporter.export(spans) is SpanExportResult.FAILURE  # the outage: spooled
        assert exporter.stats()["spans_spooled"] == len(spans)
        files = [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith(".")]
        texts = [p.read_bytes() for p in files]
        assert any(b'"chat gpt-4o"' in text for text in texts)  # plain JSON, readable as it always was
        assert all(text.lstrip().startswith(b"{") for text in texts if b'"items"' in text)
        srv.clear_faults()
        wait_for(lambda: exporter.stats()["spool_backlog_bytes"] == 0, 20)
        exporter.shutdown()
        assert_each_span_once(srv, spans)
        assert exporter.stats()["compression_refused"] == {"zstd": 1}
        assert {r.encoding for r in bulk_requests(srv) if r.status == 200} <= {"gzip", "identity"}


# ------------------------------------------------------------------ the local server's side


def _post(srv: DevServer, body: bytes, encoding: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {srv.token}", "Content-Type": "application/json"}
    headers["Content-Encoding"] = encoding
    return httpx.post(srv.url + BULK, content=body, headers=headers, timeout=10)


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_a_compressed_bomb_gets_413_and_a_fitting_body_is_read(encoding):
    compress = (lambda b: gzip.compress(b)) if encoding == "gzip" else zstandard.ZstdCompressor().compress
    with DevServer(max_body_bytes=100_000) as srv:
        bomb = compress(b'{"items":[' + b" " * 5_000_000 + b"]}")
        assert len(bomb) < 100_000
        answer = _post(srv, bomb, encoding)
        assert answer.status_code == 413 and "decompressed body exceeds 100000 bytes" in answer.text
        answer = _post(srv, compress(b'{"items":[]}'), encoding)
        assert answer.status_code == 422 and "items must be a non-empty list" in answer.text  # read, then judged
        logged = bulk_requests(srv)[-1]
        assert (logged.encoding, logged.decoded_bytes) == (encoding, len(b'{"items":[]}'))


def test_encodings_the_server_does_not_take_get_415_naming_what_it_takes():
    with DevServer(refuse_encodings={"ZSTD"}) as srv:
        answer = _post(srv, b"\x00\x01", "br")
        assert answer.status_code == 415
        assert answer.json()["code"] == "unsupported_media_type" and "br" in answer.json()["message"]
        assert answer.headers["accept-encoding"] == "gzip, deflate"
        answer = _post(srv, zstandard.ZstdCompressor().compress(b'{"items":[]}'), "zstd")
        assert answer.status_code == 415 and "refuse Content-Encoding zstd" in answer.json()["message"]
        answer = _post(srv, b"not zstd at all", "gzip")
        assert answer.status_code == 400 and "not valid gzip" in answer.text
        assert [r.status for r in srv.requests] == [415, 415, 400]


def test_a_truncated_zstd_body_is_a_bad_request():
    body = zstandard.ZstdCompressor().compress(json.dumps({"items": [{"x": "y" * 5000}]}).encode())
    with DevServer() as srv:
        answer = _post(srv, body[: len(body) // 2], "zstd")
        assert answer.status_code == 400 and "not valid zstd" in answer.text


# ------------------------------------------------------------------ TLS context


def test_the_tls_context_is_built_once_per_process_and_not_for_plain_http():
    plain = PrefactorConfig.load({}, api_url="http://127.0.0.1:9", api_token="pf_x")
    bare = tls.tls_context(plain, None)
    assert isinstance(bare, ssl.SSLContext) and bare.verify_mode == ssl.CERT_REQUIRED
    assert bare.cert_store_stats()["x509_ca"] == 0  # loads no CA: it is never used for http
    secure = PrefactorConfig.load({}, api_url="https://example.invalid", api_token="pf_x")
    first = tls.tls_context(secure, None)
    assert isinstance(first, ssl.SSLContext) and first.cert_store_stats()["x509_ca"] > 0
    assert tls.tls_context(secure, None) is first  # shared, not rebuilt
    assert tls.tls_context(plain, "https://proxy.invalid:8443") is first  # a TLS proxy verifies with it
    assert tls.tls_context(secure.replace(tls_verify=False), None) is False


# ------------------------------------------------------------------ the encoder


def test_span_creates_encode_their_embedded_payloads_as_the_same_json_values():
    from prefactor_otel.mapping.values import RawJson
    from prefactor_otel.transport import wire

    payload = RawJson(b'{"name":"chat","inputs":{"text":"caf\\u00e9 \xe2\x9c\x93"},"n":1.5}')
    item = {
        "_type": "agent_spans/create",
        "idempotency_key": "k1",
        "details": {"id": "s1", "status": "complete", "payload": payload, "result_payload": RawJson(b"{}")},
    }
    encoded = json.loads(wire.encode_item(item))
    assert encoded["details"]["payload"] == json.loads(bytes(payload))
    assert encoded["details"]["result_payload"] == {} and encoded["idempotency_key"] == "k1"
    assert encoded["details"]["payload"]["inputs"]["text"] == "café ✓"
    lone = {**item, "details": {**item["details"], "status": "bad \ud800 surrogate"}}
    assert json.loads(wire.encode_item(lone))["details"]["status"] == "bad ? surrogate"  # replaced, not fatal
