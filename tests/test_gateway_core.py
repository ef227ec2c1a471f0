"""The gateway's core through its Python API (the HTTP and gRPC front ends have their own tests): requests built by
the OTel project's own OTLP encoder from real SDK spans, accepted by a `Gateway` and delivered to the local server.
The assertions read what the server holds: every span once, one run per trace, every run finished."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from prefactor_otel.devserver import DevServer
from prefactor_otel.gateway.service import Gateway, Unauthenticated
from prefactor_otel.gateway.settings import GatewaySettings
from tests.spans import Collector, agent_trace, wait_for


def settings_for(srv: DevServer, directory: Path, **overrides: Any) -> GatewaySettings:
    options: dict[str, Any] = {
        "api_url": srv.url,
        "api_token": srv.token,
        "agent_id": srv.agent_id,
        "environment_id": srv.environment_id,
        "directory": directory,
        "finish_grace_seconds": 0.3,
        "ingress_tokens": "ingress-1",
        **overrides,
    }
    return GatewaySettings.load({}, **options)


@pytest.fixture
def started() -> Iterator[list[Gateway]]:
    gateways: list[Gateway] = []
    yield gateways
    for gateway in gateways:
        gateway.shutdown(5)


def start(gateways: list[Gateway], settings: GatewaySettings) -> Gateway:
    gateway = Gateway(settings)
    gateway.start()
    gateways.append(gateway)
    assert gateway.wait_ready(30), gateway.not_ready_reason()
    return gateway


def traced(service: str = "svc", attributes: dict[str, str] | None = None, runs: int = 2) -> list[ReadableSpan]:
    collector = Collector()
    provider = TracerProvider(resource=Resource.create({"service.name": service, **(attributes or {})}))
    provider.add_span_processor(SimpleSpanProcessor(collector))
    for _ in range(runs):
        agent_trace(provider)
    return collector.spans


def request_of(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    return encode_spans(spans)


def all_finished(srv: DevServer, runs: int) -> bool:
    instances = srv.instances()
    return len(instances) == runs and all(instance["finished_at"] is not None for instance in instances)


def stored_once(srv: DevServer) -> dict[tuple[str, str], dict[str, Any]]:
    stored: dict[tuple[str, str], dict[str, Any]] = {}
    for span in srv.spans():
        key = (span["payload"]["trace_id"], span["payload"]["span_id"])
        assert key not in stored, "a span stored twice"
        stored[key] = span
    return stored


def test_accepted_spans_reach_the_server_once_in_one_finished_run_per_trace(
    srv: DevServer, tmp_path: Path, started: list[Gateway]
) -> None:
    gateway = start(started, settings_for(srv, tmp_path))
    spans = traced(runs=3)
    answer = gateway.accept("Bearer ingress-1", request_of(spans))
    assert (answer.rejected_spans, answer.message) == (0, "")
    assert wait_for(lambda: all_finished(srv, 3), 30)
    stored = stored_once(srv)
    assert len(stored) == len(spans)
    runs_by_trace: dict[str, set[str]] = {}
    for (trace_hex, _span_hex), span in stored.items():
        runs_by_trace.setdefault(trace_hex, set()).add(span["agent_instance_id"])
    assert all(len(runs) == 1 for runs in runs_by_trace.values()) and len(runs_by_trace) == 3
    assert all(instance["status"] == "complete" for instance in srv.instances())
    stats = gateway.stats()
    assert stats["spans_accepted"] == len(spans) and stats["spans_rejected"] == 0
    assert wait_for(lambda: gateway.stats()["log_segments"] == 0, 10)  # everything done: the log is retired


def test_no_or_a_wrong_ingress_token_is_unauthenticated_and_nothing_is_sent(
    srv: DevServer, tmp_path: Path, started: list[Gateway]
) -> None:
    gateway = start(started, settings_for(srv, tmp_path))
    request = request_of(traced(runs=1))
    for header in (None, "", "Bearer", "Bearer ingress-2", "Basic ingress-1", "ingress-1"):
        with pytest.raises(Unauthenticated):
            gateway.accept(header, request)
    assert gateway.stats()["requests_unauthenticated"] == 6
    gateway.shutdown(5)
    assert srv.spans() == [] and srv.instances() == []
