"""Acceptance: the exporter against the local Prefactor-compatible server over real HTTP."""

from __future__ import annotations

import logging
import socket
import time
from datetime import datetime

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExportResult

from prefactor_otel import PrefactorSpanExporter
from prefactor_otel.devserver import DevServer, Fault
from tests.spans import Collector, agent_trace, exporter_for, make_provider

TOKEN = "pf_e2e_secret_token_do_not_log"
BIG = "漢字テキスト✓é" * 20_000  # ~200 KB of UTF-8, non-ASCII


@pytest.fixture
def server():
    with DevServer(token=TOKEN) as srv:
        yield srv


def _exporter(srv: DevServer, **kw) -> PrefactorSpanExporter:
    return exporter_for(srv, **{"export_timeout": 10, **kw})


def three_traces(provider: TracerProvider) -> None:
    agent_trace(provider)  # nested agent -> llm / tool -> plain
    tracer = provider.get_tracer("tests.e2e")
    try:
        with (
            tracer.start_as_current_span("invoke_agent failing", attributes={"gen_ai.operation.name": "invoke_agent"}),
            tracer.start_as_current_span("execute_tool boom", attributes={"gen_ai.tool.name": "boom"}),
        ):
            raise ValueError("the tool exploded")
    except ValueError:
        pass
    with tracer.start_as_current_span("big", attributes={"blob": BIG}):
        pass


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def assert_delivered(srv: DevServer, otel_spans) -> None:
    instances = srv.instances()
    assert len(instances) == 3
    spans = srv.spans()
    assert len(spans) == len(otel_spans)  # every span exactly once
    by_otel = {}
    for s in spans:
        key = (s["payload"]["trace_id"], s["payload"]["span_id"])
        assert key not in by_otel
        by_otel[key] = s
    instance_by_id = {i["id"]: i for i in instances}
    statuses = {}
    for otel in otel_spans:
        trace_hex, span_hex = f"{otel.context.trace_id:032x}", f"{otel.context.span_id:016x}"
        s = by_otel[(trace_hex, span_hex)]
        if otel.parent is None:
            assert s["parent_span_id"] is None
            statuses[otel.name] = instance_by_id[s["agent_instance_id"]]["status"]
        else:
            parent = by_otel[(trace_hex, f"{otel.parent.span_id:016x}")]
            assert s["parent_span_id"] == parent["id"]
            assert s["agent_instance_id"] == parent["agent_instance_id"]
        assert abs((_parse(s["started_at"]).timestamp() * 1e9) - otel.start_time) < 1e6
        assert abs((_parse(s["finished_at"]).timestamp() * 1e9) - otel.end_time) < 1e6
        assert s["status"] == ("failed" if otel.status.status_code.name == "ERROR" else "complete")
    assert statuses == {"invoke_agent support": "complete", "invoke_agent failing": "failed", "big": "complete"}
    big = next(s for s in spans if s["payload"]["name"] == "big")
    assert big["payload"]["metadata"]["blob"] == BIG


def test_programmatic_batch_span_processor(server, caplog):
    caplog.set_level(logging.DEBUG)
    exporter = _exporter(server)
    collector = Collector()
    provider = TracerProvider(resource=Resource.create({"service.name": "e2e", "service.version": "9"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    provider.add_span_processor(SimpleSpanProcessor(collector))
    three_traces(provider)
    provider.shutdown()
    assert_delivered(server, collector.spans)
    stats = exporter.stats()
    assert stats["spans_exported"] == len(collector.spans) and stats["spans_dropped"] == 0
    assert stats["instances_finished"] == 3
    assert TOKEN not in caplog.text


def test_children_in_an_earlier_export_than_their_parent(server):
    provider, collector = make_provider()
    agent_trace(provider)
    spans = collector.spans  # ended children first, root last
    exporter = _exporter(server)
    assert exporter.export(spans[:2]) is SpanExportResult.SUCCESS
    assert server.spans() == []  # they wait for their parents
    assert exporter.export(spans[2:]) is SpanExportResult.SUCCESS
    exporter.shutdown()
    stored = {s["payload"]["span_id"]: s for s in server.spans()}
    assert len(stored) == 4
    for otel in spans:
        if otel.parent is not None:
            assert (
                stored[f"{otel.context.span_id:016x}"]["parent_span_id"] == stored[f"{otel.parent.span_id:016x}"]["id"]
            )


def test_commit_then_fail_retry_creates_no_duplicate(server):
    provider, collector = make_provider()
    agent_trace(provider)
    server.add_fault(Fault(path="/api/v1/bulk", commit_then_fail=True, status=500, times=1))
    exporter = _exporter(server)
    assert exporter.export(collector.spans) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert len(server.spans()) == 4
    assert len(server.instances()) == 1 and server.instances()[0]["status"] == "complete"
    assert exporter.stats()["retries"] >= 1


def test_429_retry_after_is_honoured(server):
    provider, collector = make_provider()
    agent_trace(provider)
    server.add_fault(Fault(path="/api/v1/bulk", status=429, retry_after="1", times=1))
    exporter = _exporter(server)
    started = time.monotonic()
    assert exporter.export(collector.spans) is SpanExportResult.SUCCESS
    assert time.monotonic() - started >= 0.95  # waited as told, not the (shorter) first backoff
    exporter.shutdown()
    assert len(server.spans()) == 4


def test_dropped_connection_is_retried(server):
    provider, collector = make_provider()
    agent_trace(provider)
    server.add_fault(Fault(path="/api/v1/bulk", drop_connection=True, times=2))
    exporter = _exporter(server)
    assert exporter.export(collector.spans) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert len(server.spans()) == 4


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_dead_server_export_fails_within_timeout_and_shutdown_within_budget(tmp_path):
    from prefactor_otel.model.ids import encode

    provider, collector = make_provider()
    agent_trace(provider)
    exporter = PrefactorSpanExporter(
        environ={},
        spool_dir=str(tmp_path),
        api_url=_dead_url(),
        api_token=TOKEN,
        agent_id=encode(1_700_000_000_000, 5, 5),
        export_timeout=1,
    )
    started = time.monotonic()
    assert exporter.export(collector.spans) is SpanExportResult.FAILURE
    assert time.monotonic() - started < 1.5
    started = time.monotonic()
    exporter.shutdown(timeout_millis=500)
    assert time.monotonic() - started < 1.0
    assert exporter.export(collector.spans) is SpanExportResult.FAILURE  # after shutdown


def test_auth_failure_stops_sending_with_one_clear_line(server, caplog):
    caplog.set_level(logging.DEBUG)
    provider, collector = make_provider()
    agent_trace(provider)
    exporter = PrefactorSpanExporter(
        environ={}, api_url=server.url, api_token="pf_wrong_token_xyz", agent_id=server.agent_id, export_timeout=2
    )
    assert exporter.export(collector.spans) is SpanExportResult.FAILURE
    requests_after_first = len(server.requests)
    assert exporter.export(collector.spans) is SpanExportResult.FAILURE
    assert len(server.requests) == requests_after_first  # stopped sending
    lines = [r for r in caplog.records if r.name == "prefactor_otel" and r.levelno >= logging.ERROR]
    assert len(lines) == 1 and "Check the api_token argument" in lines[0].getMessage()  # where the token came from
    assert "pf_wrong_token_xyz" not in caplog.text
    exporter.shutdown(timeout_millis=200)


def test_no_token_app_runs_nothing_sent(server, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv("PREFACTOR_API_TOKEN", raising=False)
    exporter = PrefactorSpanExporter(api_url=server.url, agent_id=server.agent_id)
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    agent_trace(provider)
    provider.shutdown()
    assert server.requests == []
    warnings = [r for r in caplog.records if r.name == "prefactor_otel" and r.levelno == logging.WARNING]
    assert len(warnings) == 1


def test_partition_from_pfid_generate_when_no_agent_id(server, tmp_path):
    provider, collector = make_provider()
    agent_trace(provider)
    # Its own spool directory: the default one is keyed by the API URL, and the partition learnt is kept there. An
    # earlier DevServer (another random partition, the same token) on the same reused port would have left its
    # partition in the default directory, and this exporter would plan with it (seen once in CI).
    exporter = PrefactorSpanExporter(
        environ={}, api_url=server.url, api_token=server.token, finish_grace_seconds=0, spool_dir=str(tmp_path)
    )
    assert exporter.export(collector.spans) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert len(server.spans()) == 4
