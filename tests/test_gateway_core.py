"""The gateway's core through its Python API (the HTTP and gRPC front ends have their own tests): requests built by
the OTel project's own OTLP encoder from real SDK spans, accepted by a `Gateway` and delivered to the local server.
The assertions read what the server holds: every span once, one run per trace, every run finished."""

from __future__ import annotations

import threading
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
from prefactor_otel.devserver.faults import Fault
from prefactor_otel.durability.ingress_log import IngressLog, segment_name
from prefactor_otel.gateway.service import Gateway, Overloaded, Unauthenticated
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


def test_shutdown_spools_what_it_cannot_deliver_and_the_next_gateway_sends_it(
    srv: DevServer, tmp_path: Path, started: list[Gateway]
) -> None:
    srv.add_fault(Fault(status=503, times=-1))
    gateway = Gateway(settings_for(srv, tmp_path, export_timeout=1, finish_grace_seconds=60))
    gateway.start()
    assert gateway.wait_ready(30)
    spans = traced(runs=3)
    assert gateway.accept("Bearer ingress-1", request_of(spans)).rejected_spans == 0
    gateway.stop_accepting()
    assert gateway.not_ready_reason() == "stopping"
    with pytest.raises(Overloaded) as refused:
        gateway.accept("Bearer ingress-1", request_of(traced(runs=1)))
    assert refused.value.unavailable and refused.value.retry_after_s >= 1
    gateway.shutdown(3)
    # Every run finished at shutdown (as the exporter's shutdown does), all of it in the spool: the log is empty.
    assert not list((tmp_path / "log").glob("seg-*.log"))
    assert list((tmp_path / "spool" / "default.default").glob("*.json"))
    stats = gateway.stats()["pipelines"]["default.default"]
    assert stats["spans_spooled"] == len(spans) and not stats["dropped_by_reason"]
    srv.clear_faults()
    start(started, settings_for(srv, tmp_path))
    assert wait_for(lambda: all_finished(srv, 3), 30)
    assert len(stored_once(srv)) == len(spans)


def test_the_replica_id_is_created_once_and_kept(srv: DevServer, tmp_path: Path) -> None:
    first = Gateway(settings_for(srv, tmp_path))
    first.start()
    replica = first.replica_id
    first.shutdown(5)
    second = Gateway(settings_for(srv, tmp_path))
    second.start()
    assert second.replica_id == replica and len(replica) == 16
    second.shutdown(5)
    assert (tmp_path / "replica-id").read_text().strip() == replica


def test_concurrent_requests_are_acknowledged_with_shared_fsyncs_and_all_delivered(
    srv: DevServer, tmp_path: Path, started: list[Gateway]
) -> None:
    gateway = start(started, settings_for(srv, tmp_path))
    requests = [traced(f"client-{n}", runs=1) for n in range(24)]
    errors: list[BaseException] = []

    def send(spans: list[ReadableSpan]) -> None:
        try:
            assert gateway.accept("Bearer ingress-1", request_of(spans)).rejected_spans == 0
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(spans,)) for spans in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert 1 <= gateway.stats()["log_fsyncs"] <= len(requests)
    assert wait_for(lambda: all_finished(srv, len(requests)), 30)
    assert len(stored_once(srv)) == sum(len(spans) for spans in requests)


def test_a_replay_skips_a_corrupt_and_a_torn_record_and_delivers_the_rest(
    srv: DevServer, tmp_path: Path, started: list[Gateway]
) -> None:
    runs = [traced(f"run-{n}", runs=1) for n in range(4)]
    log = IngressLog(tmp_path / "log", max_bytes=1 << 20, segment_bytes=1 << 20)
    log.open()
    for spans in runs:  # as a killed gateway left them: acknowledged records, the last one torn by the kill
        ticket = log.write("default.default", request_of(spans).SerializeToString())
        log.sync(ticket)
    segment = ticket.segment
    log.close()
    path = tmp_path / "log" / segment_name(segment)
    content = bytearray(path.read_bytes())
    second = request_of(runs[1]).SerializeToString()
    at = content.index(second)
    content[at + len(second) // 2] ^= 0x55  # a damaged sector in the second record
    path.write_bytes(bytes(content[:-7]))  # and the fourth cut short
    gateway = start(started, settings_for(srv, tmp_path))
    assert wait_for(lambda: all_finished(srv, 2), 30)
    kept = {span.context.trace_id for spans in (runs[0], runs[2]) for span in spans if span.context is not None}
    assert {int(trace, 16) for trace, _ in stored_once(srv)} == kept
    stats = gateway.stats()
    assert (stats["log_records_corrupt"], stats["log_records_torn"]) == (1, 1)
    assert stats["spans_replayed"] == len(runs[0]) + len(runs[2])
    assert wait_for(lambda: gateway.stats()["log_segments"] == 0, 30)  # everything readable is done: retired


def test_records_of_a_route_that_is_gone_are_kept_in_the_log_not_sent(
    srv: DevServer, tmp_path: Path, started: list[Gateway]
) -> None:
    ours, theirs = traced("ours", runs=1), traced("theirs", runs=1)
    log = IngressLog(tmp_path / "log", max_bytes=1 << 20, segment_bytes=1 << 20)
    log.open()
    log.sync(log.write("removed-route.agent", request_of(theirs).SerializeToString()))
    log.sync(log.write("default.default", request_of(ours).SerializeToString()))
    log.close()
    gateway = start(started, settings_for(srv, tmp_path))
    assert wait_for(lambda: all_finished(srv, 1), 30)
    assert len(stored_once(srv)) == len(ours)
    assert gateway.stats()["replay_unknown_route_records"] == 1
    gateway.shutdown(5)
    assert gateway.stats()["log_segments"] == 1  # kept for a gateway that has the route again
