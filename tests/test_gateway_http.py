"""OTLP/HTTP through a real `prefactor-otel gateway` process (port 0) to a real local server.

The happy path is the OTel project's own Python OTLP/HTTP exporter (protobuf, plain and gzip) and an OTLP/JSON body;
every refusal is a real request over a socket (httpx): no token, a wrong token, an undecodable body, a wrong content
type or encoding, a body over the limit (by Content-Length, counted while read without one, and a gzip bomb), a
truncated gzip body, a wrong path or method. After them the gateway still serves, and nothing of a refused request
reached the server: each refused request carried spans of its own trace, and none of those traces is there.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google.rpc.status_pb2 import Status
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from prefactor_otel.devserver import DevServer
from tests.gateway_run import INGRESS_TOKEN, GatewayProcess, bearer
from tests.spans import agent_trace, make_provider, wait_for

PROTOBUF = {"Content-Type": "application/x-protobuf"}
LIMIT = 256 * 1024  # the gateway's max_request_bytes in these tests


def sdk_trace() -> list[ReadableSpan]:
    """A 4-span agent trace (invoke_agent -> chat, execute_tool -> db query) with ids of its own."""
    provider, collector = make_provider(service="gateway-http-test")
    agent_trace(provider)
    return collector.spans


def trace_hex(spans: list[ReadableSpan]) -> str:
    assert spans[0].context is not None
    return f"{spans[0].context.trace_id:032x}"


def request_bytes(spans: list[ReadableSpan]) -> bytes:
    return encode_spans(spans).SerializeToString()


def traces_on(srv: DevServer) -> dict[str, list[dict[str, object]]]:
    found: dict[str, list[dict[str, object]]] = {}
    for span in srv.spans():
        found.setdefault(str(span["payload"]["trace_id"]), []).append(span)
    return found


def arrived(srv: DevServer, trace: str, count: int) -> bool:
    """The trace's spans are all on the server and its run is finished."""
    spans = traces_on(srv).get(trace, [])
    if len(spans) != count:
        return False
    runs = {str(span["agent_instance_id"]) for span in spans}
    instances = {str(i["id"]): i for i in srv.instances()}
    return all(instances[run]["finished_at"] is not None for run in runs)


@pytest.fixture
def gateway(srv: DevServer, tmp_path: Path) -> Iterator[GatewayProcess]:
    env = {"PREFACTOR_GATEWAY_MAX_REQUEST_BYTES": str(LIMIT)}
    with GatewayProcess(srv, tmp_path / "gw", env=env) as gw:
        gw.wait_ready()
        yield gw
        assert gw.stop() == 0, gw.output()


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_the_python_otlp_http_exporter_delivers_through_the_gateway(
    srv: DevServer, gateway: GatewayProcess, compression: Compression
) -> None:
    spans = sdk_trace()
    exporter = OTLPSpanExporter(endpoint=gateway.traces_url, headers=bearer(), compression=compression, timeout=30)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter.shutdown()
    trace = trace_hex(spans)
    assert wait_for(lambda: arrived(srv, trace, 4), 30), gateway.output()
    stored = {span["payload"]["span_id"]: span for span in traces_on(srv)[trace]}
    for span in spans:
        assert span.context is not None
        mine = stored[f"{span.context.span_id:016x}"]
        assert mine["status"] == "complete"
        if span.parent is not None:
            parent = stored[f"{span.parent.span_id:016x}"]
            assert mine["parent_span_id"] == parent["id"]
    assert len({span["agent_instance_id"] for span in stored.values()}) == 1  # one run for the trace


def otlp_json(spans: list[ReadableSpan], *, break_span_id_of: int | None = None) -> bytes:
    """The spans as OTLP/JSON, written by the specification's rules: lowerCamelCase, hex ids, integer enums."""
    request = encode_spans(spans)
    resource_spans = []
    for rs in request.resource_spans:
        scopes = []
        for ss in rs.scope_spans:
            items = []
            for index, span in enumerate(ss.spans):
                item = {
                    "traceId": span.trace_id.hex(),
                    "spanId": "00ff" if index == break_span_id_of else span.span_id.hex(),
                    "name": span.name,
                    "kind": int(span.kind),
                    "startTimeUnixNano": str(span.start_time_unix_nano),
                    "endTimeUnixNano": str(span.end_time_unix_nano),
                    "attributes": [_json_kv(kv) for kv in span.attributes],
                    "status": {"code": int(span.status.code)},
                }
                if span.parent_span_id:
                    item["parentSpanId"] = span.parent_span_id.hex()
                items.append(item)
            scopes.append({"scope": {"name": ss.scope.name, "version": ss.scope.version}, "spans": items})
        resource_spans.append(
            {"resource": {"attributes": [_json_kv(kv) for kv in rs.resource.attributes]}, "scopeSpans": scopes}
        )
    return json.dumps({"resourceSpans": resource_spans}).encode()


def _json_kv(kv: object) -> dict[str, object]:
    value = kv.value  # type: ignore[attr-defined]
    which = value.WhichOneof("value")
    if which == "int_value":
        return {"key": kv.key, "value": {"intValue": str(value.int_value)}}  # type: ignore[attr-defined]
    if which == "double_value":
        return {"key": kv.key, "value": {"doubleValue": value.double_value}}  # type: ignore[attr-defined]
    if which == "bool_value":
        return {"key": kv.key, "value": {"boolValue": value.bool_value}}  # type: ignore[attr-defined]
    return {"key": kv.key, "value": {"stringValue": value.string_value}}  # type: ignore[attr-defined]


def test_an_otlp_json_request_is_answered_in_json_with_its_partial_success(
    srv: DevServer, gateway: GatewayProcess
) -> None:
    spans = sdk_trace()
    headers = {**bearer(), "Content-Type": "application/json; charset=utf-8"}
    whole = httpx.post(gateway.traces_url, content=otlp_json(spans), headers=headers, timeout=30)
    assert whole.status_code == 200, whole.text
    assert whole.headers["content-type"] == "application/json"
    assert whole.json().get("partialSuccess", {}).get("rejectedSpans", 0) in (0, "0")
    assert wait_for(lambda: arrived(srv, trace_hex(spans), 4), 30), gateway.output()

    # One span of another trace has a span id of the wrong length: it is rejected, the others are taken.
    other = sdk_trace()
    broken = sorted(other, key=lambda span: span.parent is None)  # the root last: a child is the broken one
    answer = httpx.post(gateway.traces_url, content=otlp_json(broken, break_span_id_of=0), headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    partial = answer.json()["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 1 and partial["errorMessage"]


def rpc_status(response: httpx.Response) -> Status:
    assert response.headers["content-type"] == "application/x-protobuf"
    status = Status()
    status.ParseFromString(response.content)
    return status


def test_every_refusal_is_answered_and_nothing_of_it_reaches_the_server(
    srv: DevServer, gateway: GatewayProcess
) -> None:
    url = gateway.traces_url
    refused_traces: list[str] = []

    def refused_request() -> bytes:
        spans = sdk_trace()
        refused_traces.append(trace_hex(spans))
        return request_bytes(spans)

    with httpx.Client(timeout=30) as client:
        no_token = client.post(url, content=refused_request(), headers=PROTOBUF)
        assert no_token.status_code == 401 and no_token.headers["www-authenticate"] == "Bearer"
        assert rpc_status(no_token).code == 16  # UNAUTHENTICATED
        wrong = client.post(url, content=refused_request(), headers={**PROTOBUF, **bearer("not-the-token")})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert INGRESS_TOKEN not in wrong.text and "not-the-token" not in wrong.text

        garbage = client.post(url, content=b"\xff\xfe this is not protobuf", headers={**PROTOBUF, **bearer()})
        assert garbage.status_code == 400 and rpc_status(garbage).code == 3  # INVALID_ARGUMENT
        bad_json = client.post(url, content=b"[1, 2", headers={"Content-Type": "application/json", **bearer()})
        assert bad_json.status_code == 400 and bad_json.json()["code"] == 3

        text = client.post(url, content=refused_request(), headers={"Content-Type": "text/plain", **bearer()})
        assert text.status_code == 415
        brotli = client.post(url, content=refused_request(), headers={**PROTOBUF, **bearer(), "Content-Encoding": "br"})
        assert brotli.status_code == 415

        # Over the limit by its Content-Length: a valid request padded with a large attribute.
        big_spans = sdk_trace()
        refused_traces.append(trace_hex(big_spans))
        big_spans[0]._attributes = {"padding": "x" * (2 * LIMIT)}  # type: ignore[attr-defined]
        big = request_bytes(big_spans)
        declared = client.post(url, content=big, headers={**PROTOBUF, **bearer()})
        assert declared.status_code == 413

        # The same without a Content-Length (chunked): counted while read and cut off at the limit.
        def chunks() -> Iterator[bytes]:
            for start in range(0, len(big), 16 * 1024):
                yield big[start : start + 16 * 1024]

        chunked = client.post(url, content=chunks(), headers={**PROTOBUF, **bearer()})
        assert chunked.status_code == 413

        # A gzip bomb: a valid request of 64 MiB (one attribute of zeros) compressed to ~64 KiB.
        bomb_spans = sdk_trace()
        refused_traces.append(trace_hex(bomb_spans))
        bomb_spans[0]._attributes = {"padding": "\0" * (64 * 1024 * 1024)}  # type: ignore[attr-defined]
        bomb = gzip.compress(request_bytes(bomb_spans), compresslevel=9)
        assert len(bomb) < LIMIT
        del bomb_spans
        inflated = client.post(url, content=bomb, headers={**PROTOBUF, **bearer(), "Content-Encoding": "gzip"})
        assert inflated.status_code == 413

        truncated_body = gzip.compress(refused_request())[:-12]
        truncated = client.post(
            url, content=truncated_body, headers={**PROTOBUF, **bearer(), "Content-Encoding": "gzip"}
        )
        assert truncated.status_code == 400

        assert client.post(gateway.http_url + "/v1/metrics", content=b"", headers=PROTOBUF).status_code == 404
        get = client.get(url)
        assert get.status_code == 405 and get.headers["allow"] == "POST"
        assert client.post(gateway.http_url + "/healthz").status_code == 405

        # Still serving: a good request (gzip) is taken and its spans arrive.
        good_spans = sdk_trace()
        good = client.post(
            url,
            content=gzip.compress(request_bytes(good_spans)),
            headers={**PROTOBUF, **bearer(), "Content-Encoding": "gzip"},
        )
        assert good.status_code == 200, good.text
        answer = ExportTraceServiceResponse()
        answer.ParseFromString(good.content)
        assert answer.partial_success.rejected_spans == 0
    assert wait_for(lambda: arrived(srv, trace_hex(good_spans), 4), 30), gateway.output()
    on_server = traces_on(srv)
    assert not set(refused_traces) & set(on_server), "a refused request reached the server"
    assert INGRESS_TOKEN not in gateway.output()  # never logged
    assert "refused POST /v1/traces" in gateway.output()  # the refusals are logged, one line per kind


def test_health_and_readiness(gateway: GatewayProcess) -> None:
    health = httpx.get(gateway.http_url + "/healthz", timeout=10)
    assert health.status_code == 200 and health.text == "ok\n"
    ready = httpx.get(gateway.http_url + "/readyz", timeout=10)
    assert ready.status_code == 200 and ready.text == "ready\n"
    assert httpx.head(gateway.http_url + "/readyz", timeout=10).status_code == 200


def test_an_empty_request_is_answered_ok(gateway: GatewayProcess) -> None:
    """An export with no spans (some clients send one to check the endpoint) is a plain success."""
    empty = ExportTraceServiceRequest().SerializeToString()
    answer = httpx.post(gateway.traces_url, content=empty, headers={**PROTOBUF, **bearer()}, timeout=30)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/x-protobuf"
