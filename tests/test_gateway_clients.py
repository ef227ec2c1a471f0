"""Real OTLP clients -> a real `prefactor-otel gateway` process -> the local server: what arrived is what the client
recorded.

Each client sends agent traces to a gateway subprocess (port 0, its own directory, an ingress token; tests/
gateway_run.py) pointed at a DevServer; what the server holds is then compared, trace by trace, with what the
client's own SDK recorded beside its OTLP exporter (tests/otlp_clients.py):
- the OTel Python SDK with `opentelemetry-exporter-otlp-proto-http` (protobuf, gzip) and `-proto-grpc` (gzip);
- the OTel JS SDK 3 with `@opentelemetry/exporter-trace-otlp-http` (OTLP/JSON) and `-proto` (protobuf, gzip),
  tests/node_otlp/ run by its pinned Node 22.
Checked for every span: it arrived once, under its name, with its parent (the Prefactor parent link of the span
the client named as parent), its status (ERROR -> failed, else complete), its token counts; and one run per trace,
finished. The same spans give byte-identical payloads through the gateway and through the in-process exporter:
each client's recorded spans, mapped in this process as the exporter maps them, give the very payloads the server
stored (the server keeps them as JSON, so they are compared as parsed JSON).
Every wait is bounded (a safety limit, never a timing assertion).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from prefactor_otel.devserver import DevServer
from prefactor_otel.mapping import map_span
from prefactor_otel.transport.wire import encode_json
from tests.gateway_run import GatewayProcess, bearer
from tests.node_install import install_node_project
from tests.otlp_clients import (
    NODE_OTLP_DIR,
    node_view,
    python_grpc_client,
    python_http_client,
    run_node_client,
    sdk_view,
)
from tests.spans import wait_for

ARRIVAL_LIMIT_S = 60.0


@pytest.fixture(scope="session")
def node() -> Path:
    return install_node_project(NODE_OTLP_DIR, node_major=22)


@pytest.fixture
def gateway(srv: DevServer, tmp_path: Path) -> Iterator[GatewayProcess]:
    with GatewayProcess(srv, tmp_path / "gw") as gw:
        gw.wait_ready()
        yield gw
        assert gw.stop() == 0, gw.output()


def stored_traces(srv: DevServer) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for span in srv.spans():
        found.setdefault(str(span["payload"]["trace_id"]), []).append(span)
    return found


def all_arrived(srv: DevServer, expected: dict[str, int]) -> bool:
    """Every trace's spans are on the server and every run they are in is finished."""
    stored = stored_traces(srv)
    if any(len(stored.get(trace, [])) != count for trace, count in expected.items()):
        return False
    instances = {str(i["id"]): i for i in srv.instances()}
    runs = {str(s["agent_instance_id"]) for trace in expected for s in stored[trace]}
    return all(instances[run]["finished_at"] is not None for run in runs)


def assert_arrived_as_recorded(srv: DevServer, gw: GatewayProcess, recorded: list[dict[str, Any]]) -> None:
    traces: dict[str, list[dict[str, Any]]] = {}
    for view in recorded:
        traces.setdefault(view["trace_id"], []).append(view)
    expected = {trace: len(views) for trace, views in traces.items()}
    assert wait_for(lambda: all_arrived(srv, expected), ARRIVAL_LIMIT_S), (expected, gw.output()[-4000:])

    stored = stored_traces(srv)
    instances = {str(i["id"]): i for i in srv.instances()}
    for trace, views in traces.items():
        spans = stored[trace]
        runs = {str(span["agent_instance_id"]) for span in spans}
        assert len(runs) == 1, f"trace {trace} is in {len(runs)} runs"
        assert instances[runs.pop()]["status"] in ("complete", "failed")
        by_otel_id = {str(span["payload"]["span_id"]): span for span in spans}
        assert sorted(by_otel_id) == sorted(view["span_id"] for view in views)  # each span once
        for view in views:
            span = by_otel_id[view["span_id"]]
            assert span["payload"]["name"] == view["name"]
            assert span["status"] == ("failed" if view["status"][0] == 2 else "complete"), view["name"]
            parent = view["parent_span_id"]
            assert span["parent_span_id"] == (by_otel_id[parent]["id"] if parent else None), view["name"]
            attributes = view["attributes"]
            if "gen_ai.usage.input_tokens" in attributes:
                usage = span["payload"]["token_usage"]
                assert usage["prompt_tokens"] == attributes["gen_ai.usage.input_tokens"]
                assert usage["completion_tokens"] == attributes["gen_ai.usage.output_tokens"]


def assert_payloads_as_the_exporter_maps_them(srv: DevServer, recorded: list[ReadableSpan]) -> None:
    """The in-process exporter's mapping of the very spans the client recorded gives the payloads the gateway sent."""
    stored = {str(span["payload"]["span_id"]): span for span in srv.spans()}
    for span in recorded:
        assert span.context is not None
        record = map_span(span)
        arrived = stored[f"{span.context.span_id:016x}"]
        assert json.loads(encode_json(record.payload)) == arrived["payload"], span.name  # type: ignore[arg-type]


def test_python_otlp_http_through_the_gateway(srv: DevServer, gateway: GatewayProcess) -> None:
    recorded, results = python_http_client(gateway.traces_url, compress=True, headers=bearer())
    assert results and all(result is SpanExportResult.SUCCESS for result in results)
    assert_arrived_as_recorded(srv, gateway, [sdk_view(span) for span in recorded])
    assert_payloads_as_the_exporter_maps_them(srv, recorded)


def test_python_otlp_grpc_through_the_gateway(srv: DevServer, gateway: GatewayProcess) -> None:
    recorded, results = python_grpc_client(gateway.grpc_target, compress=True, headers=bearer())
    assert results and all(result is SpanExportResult.SUCCESS for result in results)
    assert_arrived_as_recorded(srv, gateway, [sdk_view(span) for span in recorded])
    assert_payloads_as_the_exporter_maps_them(srv, recorded)


@pytest.mark.parametrize(("protocol", "compression"), [("json", "none"), ("protobuf", "gzip")])
def test_node_otlp_through_the_gateway(
    node: Path, srv: DevServer, gateway: GatewayProcess, protocol: str, compression: str
) -> None:
    report = run_node_client(node, gateway.traces_url, protocol, compression=compression, headers=bearer())
    assert report["results"] and all(r["code"] == 0 for r in report["results"]), report["results"]
    assert report["errors"] == []
    assert_arrived_as_recorded(srv, gateway, [node_view(span) for span in report["spans"]])


def test_every_client_into_one_gateway_one_run_per_trace(node: Path, srv: DevServer, gateway: GatewayProcess) -> None:
    """The four clients at once into one gateway: each trace is one run, nothing mixed between them."""
    recorded: list[dict[str, Any]] = []
    spans, _ = python_http_client(gateway.traces_url, compress=False, headers=bearer(), service="py-http")
    recorded += [sdk_view(span) for span in spans]
    spans, _ = python_grpc_client(gateway.grpc_target, compress=False, headers=bearer(), service="py-grpc")
    recorded += [sdk_view(span) for span in spans]
    for protocol in ("json", "protobuf"):
        report = run_node_client(node, gateway.traces_url, protocol, headers=bearer(), service=f"node-{protocol}")
        recorded += [node_view(span) for span in report["spans"]]
    assert len({view["trace_id"] for view in recorded}) == 6
    assert_arrived_as_recorded(srv, gateway, recorded)
