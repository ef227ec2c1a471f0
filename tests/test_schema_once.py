"""The schema set once per agent (PREFACTOR_SCHEMA_ONCE), against the real local server: later registers leave it
out where the server takes that (DevServer(register_without_schema=True)), a strict server's refusal is learned
without losing a run, spooled registers keep their set for the process that replays them, and by default every
register carries it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from prefactor_otel.devserver import DevServer, Fault
from tests.spans import agent_trace, exporter_for, make_provider, wait_for

BULK = "/api/v1/bulk"


def traces(count: int) -> list[ReadableSpan]:
    provider, collector = make_provider()
    for _ in range(count):
        agent_trace(provider)
    return collector.spans


def assert_all_delivered(srv: DevServer, spans: list[ReadableSpan], runs: int) -> None:
    instances = srv.instances()
    assert len(instances) == runs and all(i["status"] == "complete" for i in instances)
    assert len({i["agent_schema_version_id"] for i in instances}) == 1  # every run has the one schema version
    stored = [(s["payload"]["trace_id"], s["payload"]["span_id"]) for s in srv.spans()]
    assert sorted(stored) == sorted((f"{s.context.trace_id:032x}", f"{s.context.span_id:016x}") for s in spans)


def test_later_registers_leave_the_set_out_where_the_server_takes_that():
    first, later = traces(2), traces(4)
    with DevServer(register_without_schema=True) as srv:
        exporter = exporter_for(srv, compression="none", schema_once=True)
        assert exporter.export(first) is SpanExportResult.SUCCESS
        sizes_first = [r.request_bytes for r in srv.requests if r.path == BULK]
        assert exporter.export(later) is SpanExportResult.SUCCESS
        exporter.shutdown()
        assert_all_delivered(srv, first + later, runs=6)
        stats = exporter.stats()
        assert stats["schema_sets_omitted"] == 4 and stats["schema_omission_refused"] == 0
        assert stats["instance_actions_dropped"] == {} and stats["spans_dropped"] == 0
        # per run, the first request carried a set (~10 KB) each; the second none
        second = [r.request_bytes for r in srv.requests if r.path == BULK][len(sizes_first)]
        assert second / 4 < sizes_first[0] / 2 / 2


def test_a_strict_server_refuses_once_and_every_run_is_registered_with_its_set(caplog):
    caplog.set_level(logging.INFO, logger="prefactor_otel")
    first, second, third = traces(1), traces(3), traces(2)
    with DevServer() as srv:  # strict: register requires agent_schema_version (422), as prefactor-http does
        exporter = exporter_for(srv, schema_once=True)
        for batch in (first, second):
            assert exporter.export(batch) is SpanExportResult.SUCCESS
        omitted = exporter.stats()["schema_sets_omitted"]
        assert omitted >= 1  # tried once, in the second export
        assert exporter.export(third) is SpanExportResult.SUCCESS
        exporter.shutdown()
        assert_all_delivered(srv, first + second + third, runs=6)
        stats = exporter.stats()
        assert stats["schema_omission_refused"] == 1 and stats["schema_sets_omitted"] == omitted  # learned
        assert stats["instance_actions_dropped"] == {} and stats["spans_dropped"] == 0
        bulk = [r for r in srv.requests if r.path == BULK]
        assert [r.status for r in bulk].count(422) == 0  # items refused, not requests
        # after the refusal the plan goes on in full requests, not one item per request
        assert len(bulk) <= 6, [r.item_count for r in bulk]
        lines = [r.getMessage() for r in caplog.records if "without its schema set" in r.getMessage()]
        assert len(lines) == 1 and "agent_schema_version is required" in lines[0]


def test_a_register_taken_without_its_set_whose_answer_was_lost_is_not_registered_twice():
    first, later = traces(1), traces(2)
    with DevServer(register_without_schema=True) as srv:
        exporter = exporter_for(srv, schema_once=True)
        assert exporter.export(first) is SpanExportResult.SUCCESS
        srv.add_fault(Fault(commit_then_fail=True, status=503))  # stored, then the answer is lost
        assert exporter.export(later) is SpanExportResult.SUCCESS
        exporter.shutdown()
        assert_all_delivered(srv, first + later, runs=3)
        stats = exporter.stats()
        assert stats["schema_omission_refused"] == 0 and stats["schema_sets_omitted"] >= 2
        assert stats["retries"] >= 1 and stats["instance_actions_dropped"] == {}


def test_spooled_registers_keep_their_set_for_the_process_that_replays_them(tmp_path: Path):
    spans = traces(3)
    with DevServer() as srv:  # strict
        srv.add_fault(Fault(drop_connection=True, times=-1))
        writer = exporter_for(srv, spool_dir=str(tmp_path), export_timeout=1, schema_once=True)
        assert writer.export(spans) is SpanExportResult.FAILURE  # the outage: spooled
        writer.shutdown(timeout_millis=500)
        spooled = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
        assert b"span_type_schemas" in spooled  # the set is on disk, as before
        srv.clear_faults()
        replayer = exporter_for(srv, spool_dir=str(tmp_path), schema_once=True)
        wait_for(lambda: len(srv.instances()) == 3 and replayer.stats()["spool_backlog_bytes"] == 0, 20)
        replayer.shutdown()
        assert_all_delivered(srv, spans, runs=3)
        stats = replayer.stats()
        assert stats["instance_actions_dropped"] == {} and stats["spans_dropped"] == 0


def test_by_default_every_register_carries_the_set():
    first, later = traces(1), traces(2)
    with DevServer(register_without_schema=True) as srv:
        exporter = exporter_for(srv)
        for batch in (first, later):
            assert exporter.export(batch) is SpanExportResult.SUCCESS
        exporter.shutdown()
        assert_all_delivered(srv, first + later, runs=3)
        stats = exporter.stats()
        assert stats["schema_sets_omitted"] == 0 and stats["schema_omission_refused"] == 0
