"""OTLP/gRPC through a real `prefactor-otel gateway` process (port 0) to a real local server.

The happy path is the OTel project's own Python OTLP/gRPC exporter (plain and gzip); every refusal is a real RPC on
a grpc channel: no token, a wrong token (UNAUTHENTICATED), a message that is not an export request
(INVALID_ARGUMENT), a message over the limit, plain or as a gzip bomb (RESOURCE_EXHAUSTED, grpcio's own). After
them the gateway still serves, and none of the refused requests' traces reached the server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace.export import SpanExportResult

from prefactor_otel.devserver import DevServer
from tests.gateway_run import INGRESS_TOKEN, GatewayProcess
from tests.spans import wait_for
from tests.test_gateway_http import arrived, request_bytes, sdk_trace, trace_hex, traces_on

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
LIMIT = 256 * 1024
AUTH = (("authorization", f"Bearer {INGRESS_TOKEN}"),)


@pytest.fixture
def gateway(srv: DevServer, tmp_path: Path) -> Iterator[GatewayProcess]:
    env = {"PREFACTOR_GATEWAY_MAX_REQUEST_BYTES": str(LIMIT)}
    with GatewayProcess(srv, tmp_path / "gw", env=env) as gw:
        gw.wait_ready()
        yield gw
        assert gw.stop() == 0, gw.output()


@pytest.mark.parametrize("compression", [grpc.Compression.NoCompression, grpc.Compression.Gzip])
def test_the_python_otlp_grpc_exporter_delivers_through_the_gateway(
    srv: DevServer, gateway: GatewayProcess, compression: grpc.Compression
) -> None:
    spans = sdk_trace()
    exporter = OTLPSpanExporter(
        endpoint=gateway.grpc_target, insecure=True, headers=AUTH, compression=compression, timeout=30
    )
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter.shutdown()
    trace = trace_hex(spans)
    assert wait_for(lambda: arrived(srv, trace, 4), 30), gateway.output()
    stored = traces_on(srv)[trace]
    assert len({span["agent_instance_id"] for span in stored}) == 1
    assert all(span["status"] == "complete" for span in stored)


def test_every_refusal_is_a_grpc_status_and_nothing_of_it_reaches_the_server(
    srv: DevServer, gateway: GatewayProcess
) -> None:
    refused_traces: list[str] = []

    def refused_request() -> bytes:
        spans = sdk_trace()
        refused_traces.append(trace_hex(spans))
        return request_bytes(spans)

    def code_of(call: object) -> grpc.StatusCode:
        try:
            call()  # type: ignore[operator]
        except grpc.RpcError as error:
            return error.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK

    with grpc.insecure_channel(gateway.grpc_target, options=[("grpc.max_send_message_length", 256 << 20)]) as channel:
        export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        body = refused_request()
        assert code_of(lambda: export(body, timeout=30)) == grpc.StatusCode.UNAUTHENTICATED
        wrong = (("authorization", "Bearer not-the-token"),)
        body = refused_request()
        assert code_of(lambda: export(body, metadata=wrong, timeout=30)) == grpc.StatusCode.UNAUTHENTICATED
        garbage = b"\xff\xfe this is not protobuf"
        assert code_of(lambda: export(garbage, metadata=AUTH, timeout=30)) == grpc.StatusCode.INVALID_ARGUMENT

        big_spans = sdk_trace()
        refused_traces.append(trace_hex(big_spans))
        big_spans[0]._attributes = {"padding": "x" * (2 * LIMIT)}  # type: ignore[attr-defined]
        big = request_bytes(big_spans)
        assert code_of(lambda: export(big, metadata=AUTH, timeout=30)) == grpc.StatusCode.RESOURCE_EXHAUSTED

        bomb_spans = sdk_trace()
        refused_traces.append(trace_hex(bomb_spans))
        bomb_spans[0]._attributes = {"padding": "\0" * (32 * 1024 * 1024)}  # type: ignore[attr-defined]
        bomb = request_bytes(bomb_spans)
        del bomb_spans
        gzipped = grpc.Compression.Gzip
        outcome = code_of(lambda: export(bomb, metadata=AUTH, compression=gzipped, timeout=60))
        assert outcome == grpc.StatusCode.RESOURCE_EXHAUSTED

        good_spans = sdk_trace()
        answer = export(request_bytes(good_spans), metadata=AUTH, compression=gzipped, timeout=30)
        response = ExportTraceServiceResponse()
        response.ParseFromString(answer)
        assert response.partial_success.rejected_spans == 0
    assert wait_for(lambda: arrived(srv, trace_hex(good_spans), 4), 30), gateway.output()
    assert not set(refused_traces) & set(traces_on(srv)), "a refused request reached the server"
    assert INGRESS_TOKEN not in gateway.output()
    assert "refused gRPC Export" in gateway.output()
