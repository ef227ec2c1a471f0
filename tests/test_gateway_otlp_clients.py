"""What real OTLP clients put on the wire decodes to the spans they recorded.

Each real client sends agent traces to a test-only capture server on 127.0.0.1 (tests/otlp_clients.py) that keeps
the raw request bodies; `gateway/otlp.py` parses and decodes them; the result must equal, span by span and field
by field, what the client's own SDK recorded (a collector / InMemorySpanExporter beside its OTLP exporter):
- the OTel Python SDK with `opentelemetry-exporter-otlp-proto-http` (protobuf, with and without gzip) and
  `-proto-grpc` (with and without gzip; the capture takes the raw request bytes, undeserialized);
- the OTel JS SDK 3 (`@opentelemetry/sdk-trace`) with `@opentelemetry/exporter-trace-otlp-http` (OTLP/JSON) and
  `-proto` (protobuf), with and without gzip, from tests/node_otlp/ (pinned in its lockfile, run by the pinned
  Node 22: the newest OTel JS exporters need Node >= 22.15), installed by tests/node_install.py.
The decoded spans then map (`map_span`) to the span types their gen_ai attributes say, token counts included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SpanExportResult

from prefactor_otel.gateway import otlp
from prefactor_otel.mapping import map_span
from tests.node_install import install_node_project
from tests.otlp_clients import (
    NODE_OTLP_DIR,
    CaptureServer,
    GrpcCapture,
    by_span_id,
    node_view,
    python_grpc_client,
    python_http_client,
    run_node_client,
    sdk_view,
)

INGRESS = {"Authorization": "Bearer ingress-token-1"}


@pytest.fixture(scope="session")
def node() -> Path:
    return install_node_project(NODE_OTLP_DIR, node_major=22)


def decoded_views(requests: list[Any]) -> list[dict[str, Any]]:
    views = []
    for request in requests:
        result = otlp.decode_spans(request)
        assert (result.rejected, result.message) == (0, "")
        views += [sdk_view(span) for span in result.spans]
    return views


def assert_same_spans(arrived: list[dict[str, Any]], recorded: list[dict[str, Any]]) -> None:
    assert len(arrived) == len(recorded)
    arrived_by_id, recorded_by_id = by_span_id(arrived), by_span_id(recorded)
    assert sorted(arrived_by_id) == sorted(recorded_by_id)
    for span_id, view in recorded_by_id.items():
        assert arrived_by_id[span_id] == view, view["name"]


def schema_and_tokens(views_and_spans: list[Any]) -> dict[str, tuple[str, Any]]:
    out = {}
    for span in views_and_spans:
        record = map_span(span)
        payload = record.payload
        assert isinstance(payload, dict)
        out[record.name] = (record.schema_name, payload.get("token_usage"))
    return out


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_python_otlp_http_protobuf(compress: bool) -> None:
    with CaptureServer() as capture:
        recorded, results = python_http_client(f"{capture.url}/v1/traces", compress=compress, headers=INGRESS)
        captured = capture.captured

    assert results and all(result is SpanExportResult.SUCCESS for result in results)
    assert {c.path for c in captured} == {"/v1/traces"}
    for c in captured:
        assert c.headers["content-type"] == "application/x-protobuf"
        assert c.headers["authorization"] == INGRESS["Authorization"]
        assert c.headers.get("content-encoding") == ("gzip" if compress else None)
    assert_same_spans(decoded_views([c.request() for c in captured]), [sdk_view(s) for s in recorded])


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_python_otlp_grpc(compress: bool) -> None:
    capture = GrpcCapture()
    with capture.running():
        recorded, results = python_grpc_client(capture.endpoint, compress=compress, headers=INGRESS)

    assert results and all(result is SpanExportResult.SUCCESS for result in results)
    assert capture.calls
    assert all(call.metadata["authorization"] == INGRESS["Authorization"] for call in capture.calls)
    requests = [otlp.parse_protobuf(call.body) for call in capture.calls]
    assert_same_spans(decoded_views(requests), [sdk_view(s) for s in recorded])


@pytest.mark.parametrize("compression", ["none", "gzip"])
@pytest.mark.parametrize("protocol", ["json", "protobuf"])
def test_node_otlp_http(node: Path, protocol: str, compression: str) -> None:
    with CaptureServer() as capture:
        report = run_node_client(node, f"{capture.url}/v1/traces", protocol, compression=compression, headers=INGRESS)
        captured = capture.captured

    assert report["node_version"].startswith("v22.")
    assert report["results"] and all(r["code"] == 0 for r in report["results"]), report["results"]
    assert report["errors"] == []
    content_type = "application/json" if protocol == "json" else "application/x-protobuf"
    for c in captured:
        assert (c.path, c.headers["content-type"]) == ("/v1/traces", content_type)
        assert c.headers["authorization"] == INGRESS["Authorization"]
        assert c.headers.get("content-encoding") == (None if compression == "none" else "gzip")
    requests = [c.request() for c in captured]
    recorded = [node_view(span) for span in report["spans"]]
    assert_same_spans(decoded_views(requests), recorded)

    # The trace as the client built it: one trace, three children of the root, a remote link, an error.
    spans = {s.name: s for request in requests for s in otlp.decode_spans(request).spans}
    root = spans["invoke_agent support"]
    assert root.parent is None and len({s.context.trace_id for s in spans.values()}) == 1
    assert {name for name, s in spans.items() if s.parent and s.parent.span_id == root.context.span_id} == {
        "chat gpt-4o",
        "execute_tool lookup",
        "execute_tool broken",
    }
    assert root.links[0].context.is_remote and root.events[0].name == "agent.started"
    assert spans["execute_tool broken"].status.description == "tool exploded"
    assert all(s.context.trace_flags.sampled for s in spans.values())  # JS writes the W3C flags in bits 0-7
    mapped = schema_and_tokens(list(spans.values()))
    assert mapped["invoke_agent support"][0] == "otel:agent" and mapped["execute_tool lookup"][0] == "otel:tool"
    schema, tokens = mapped["chat gpt-4o"]
    assert schema == "otel:llm" and tokens is not None
    assert (tokens["prompt_tokens"], tokens["completion_tokens"]) == (12, 5)
