"""A run whose root never comes, with the exporter alone (`BatchSpanProcessor(PrefactorSpanExporter())`: no span
starts), over the real local server: the planner finishes it while the process runs -- once everything of it is
delivered and it has been quiet for max_wait_seconds + the grace period -- ended at its last span, failed if a span
failed. The root coming after all opens a run of its own: nothing is dropped. (The gateway's case:
tests/test_gateway_core_traces.py; the rule itself: tests/test_planner.py.)"""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SpanExportResult

from prefactor_otel.devserver import DevServer
from tests.spans import agent_trace, exporter_for, make_provider, wait_for


def finished(srv: DevServer, runs: int) -> list[dict[str, Any]]:
    instances = srv.instances()
    if len(instances) == runs and all(instance["finished_at"] is not None for instance in instances):
        return instances
    return []


def test_with_the_exporter_alone_a_run_whose_root_is_lost_is_finished_while_the_process_runs(srv: DevServer) -> None:
    provider, collector = make_provider()
    with pytest.raises(RuntimeError):
        agent_trace(provider, fail=True)  # the tool fails, and so does the root (which is lost below)
    root = next(span for span in collector.spans if span.parent is None)
    steps = [span for span in collector.spans if span.parent is not None]
    exporter = exporter_for(srv, max_wait_seconds=0.3, finish_grace_seconds=0.2)
    try:
        # The root is lost (the batch queue was full when it ended, or it could not be mapped): its steps only.
        assert exporter.export(steps) == SpanExportResult.SUCCESS
        # No flush, no shutdown: the exporter's own finisher thread applies the rule.
        (instance,) = wait_for(lambda: finished(srv, 1), 30)
        assert instance["status"] == "failed"  # a step failed
        stored = srv.spans(instance["id"])
        assert len(stored) == len(steps) and all(span["status"] != "active" for span in stored)
        assert instance["finished_at"] == max(span["finished_at"] for span in stored)  # at its last span
        # The server stores the finish before the finisher thread has read its answer: wait for the count too.
        wait_for(lambda: exporter.stats()["instances_finished"] == 1, 30)
        stats = exporter.stats()
        assert stats["instances_finished"] == 1 and stats["open_traces"] == 0
        assert stats["runs_finished_without_root"] == 1
        # The root comes after all (a run that lasted longer than the exporter waited): a run of its own.
        assert exporter.export([root]) == SpanExportResult.SUCCESS
        assert wait_for(lambda: finished(srv, 2), 30)
        wait_for(lambda: exporter.stats()["instances_finished"] == 2, 30)  # its answer read, as above
        stats = exporter.stats()
        assert stats["spans_exported"] == len(collector.spans) and stats["spans_dropped"] == 0
        assert stats["runs_finished_without_root"] == 1  # the second run had its root
    finally:
        exporter.shutdown()


def test_with_the_exporter_alone_a_run_whose_root_came_is_one_run_finished_by_its_root(srv: DevServer) -> None:
    provider, collector = make_provider()
    agent_trace(provider)
    exporter = exporter_for(srv, max_wait_seconds=0.3, finish_grace_seconds=0.2)
    try:
        assert exporter.export(collector.spans) == SpanExportResult.SUCCESS
        (instance,) = wait_for(lambda: finished(srv, 1), 30)
        assert instance["status"] == "complete"
        root = next(span for span in srv.spans(instance["id"]) if span.get("parent_span_id") is None)
        assert instance["finished_at"] == root["finished_at"]
        assert len(srv.spans(instance["id"])) == len(collector.spans)
    finally:
        exporter.shutdown()
