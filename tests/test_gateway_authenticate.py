"""`Gateway.authenticate`: the one check of an ingress token, which the front ends call before they read or decode a
body, and whose refusals are counted in `stats()["requests_unauthenticated"]` wherever they happen.

In this process: a real `Gateway` (its own directory) pointed at a real local server, with the OTLP/HTTP
application served by uvicorn on a thread and the OTLP/gRPC server (grpcio) in front of it, on 127.0.0.1 ports."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from prefactor_otel.devserver import DevServer
from prefactor_otel.gateway.grpc_service import build_server
from prefactor_otel.gateway.http_app import OtlpHttpApp
from prefactor_otel.gateway.service import Gateway, Unauthenticated
from prefactor_otel.gateway.settings import GatewaySettings
from tests.gateway_run import INGRESS_TOKEN, bearer
from tests.test_gateway_http import PROTOBUF, request_bytes, sdk_trace
from tests.test_gateway_http_app import AppServer

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


@pytest.fixture
def gateway(srv: DevServer, tmp_path: Path) -> Iterator[Gateway]:
    environ = {**srv.env(), "PREFACTOR_GATEWAY_TOKENS": INGRESS_TOKEN, "PREFACTOR_FINISH_GRACE_SECONDS": "0"}
    gateway = Gateway(GatewaySettings.load(environ, directory=tmp_path / "gw"))
    gateway.start()
    assert gateway.wait_ready(30)
    yield gateway
    gateway.shutdown(5)


def test_authenticate_gives_the_route_of_a_valid_token_and_counts_each_refusal(gateway: Gateway) -> None:
    route = gateway.authenticate(f"Bearer {INGRESS_TOKEN}")
    assert route.name == "default"
    for header in (None, "", "Bearer", "Bearer not-the-token", f"Basic {INGRESS_TOKEN}", INGRESS_TOKEN):
        with pytest.raises(Unauthenticated):
            gateway.authenticate(header)
    stats = gateway.stats()
    assert stats["requests_unauthenticated"] == 6
    assert stats["requests"] == 0  # authenticating is not a request handed to `accept`


def test_an_early_refusal_over_http_is_counted_before_the_body_is_read(gateway: Gateway) -> None:
    app = OtlpHttpApp(gateway, max_request_bytes=1 << 20)
    try:
        with AppServer(app) as server:
            # Headers promising a body that never comes: only a refusal before reading it can answer.
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
                sock.sendall(
                    b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\n"
                    b"Authorization: Bearer not-the-token\r\nContent-Length: 100000\r\n\r\n"
                )
                answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 401 "), answer
            stats = gateway.stats()
            assert stats["requests_unauthenticated"] == 1 and stats["requests"] == 0

            # A request with the token is accepted, and counts as a request, not as a refusal.
            accepted = httpx.post(
                server.traces_url, content=request_bytes(sdk_trace()), headers={**PROTOBUF, **bearer()}, timeout=30
            )
            assert accepted.status_code == 200, accepted.text
            stats = gateway.stats()
            assert stats["requests_unauthenticated"] == 1 and stats["requests"] == 1
    finally:
        app.close()


def test_an_early_refusal_over_grpc_is_counted_before_the_message_is_decoded(gateway: Gateway) -> None:
    server, port = build_server(gateway, host="127.0.0.1", port=0, max_request_bytes=1 << 20)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
            wrong = (("authorization", "Bearer not-the-token"),)
            with pytest.raises(grpc.RpcError) as refused:
                export(b"\xff\xfe not protobuf", metadata=wrong, timeout=30)  # undecodable: but refused first
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            stats = gateway.stats()
            assert stats["requests_unauthenticated"] == 1 and stats["requests"] == 0

            right = (("authorization", f"Bearer {INGRESS_TOKEN}"),)
            export(request_bytes(sdk_trace()), metadata=right, timeout=30)
            stats = gateway.stats()
            assert stats["requests_unauthenticated"] == 1 and stats["requests"] == 1
    finally:
        server.stop(grace=5).wait(10)
