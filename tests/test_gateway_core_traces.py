"""Whole traces through the gateway: services of one trace export separately (W3C `traceparent` across the hop, so
the callee's top span has a remote parent), and the gateway makes them one run with the callee's top span an
ordinary child of the caller's span -- whichever service's batch comes first. A remote parent that never comes:
its child is still delivered (as an orphan) and its run is finished."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace as trace_api
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from prefactor_otel.devserver import DevServer
from prefactor_otel.gateway.service import Gateway
from tests.spans import Collector, wait_for
from tests.test_gateway_core import all_finished, request_of, settings_for, start, stored_once


@pytest.fixture
def started() -> Iterator[list[Gateway]]:
    gateways: list[Gateway] = []
    yield gateways
    for gateway in gateways:
        gateway.shutdown(5)


def provider_of(service: str) -> tuple[TracerProvider, Collector]:
    collector = Collector()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(collector))
    return provider, collector


def two_services() -> tuple[list[ReadableSpan], list[ReadableSpan]]:
    """Service A's agent calls service B's tool over HTTP: the context crosses in a `traceparent` header."""
    a, a_spans = provider_of("agent-service")
    b, b_spans = provider_of("tool-service")
    with a.get_tracer("a").start_as_current_span(
        "invoke_agent planner", attributes={"gen_ai.operation.name": "invoke_agent"}
    ):
        with a.get_tracer("a").start_as_current_span("POST /tool", kind=trace_api.SpanKind.CLIENT):
            headers: dict[str, str] = {}
            inject(headers)
            # ... in service B, handling the request:
            with b.get_tracer("b").start_as_current_span(
                "execute_tool search",
                context=extract(headers),
                kind=trace_api.SpanKind.SERVER,
                attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"},
            ):
                with b.get_tracer("b").start_as_current_span("db query"):
                    pass
    return a_spans.spans, b_spans.spans


def test_a_trace_across_two_services_is_one_run_whichever_batch_comes_first(
    srv: DevServer, tmp_path: Path, started: list[Gateway]
) -> None:
    gateway = start(started, settings_for(srv, tmp_path))
    a_spans, b_spans = two_services()
    b_top = next(span for span in b_spans if span.name == "execute_tool search")
    assert b_top.parent is not None and b_top.parent.is_remote  # as B's exporter sends it
    # B's batch first (its spans ended first), then A's.
    assert gateway.accept("Bearer ingress-1", request_of(b_spans)).rejected_spans == 0
    assert gateway.accept("Bearer ingress-1", request_of(a_spans)).rejected_spans == 0
    assert wait_for(lambda: all_finished(srv, 1), 30)
    stored = stored_once(srv)
    assert len(stored) == 4
    (instance,) = srv.instances()
    assert instance["status"] == "complete"
    by_name = {span["payload"]["name"]: span for span in stored.values()}
    assert by_name["execute_tool search"]["parent_span_id"] == by_name["POST /tool"]["id"]  # an ordinary child
    assert by_name["db query"]["parent_span_id"] == by_name["execute_tool search"]["id"]
    assert by_name["invoke_agent planner"]["parent_span_id"] is None
    assert not by_name["execute_tool search"]["payload"]["metadata"].get("orphaned")
    assert gateway.stats()["pipelines"]["default.default"]["spans_orphaned"] == 0


def test_a_remote_parent_that_never_comes_still_gets_its_child_delivered_and_its_run_finished(
    srv: DevServer, tmp_path: Path, started: list[Gateway]
) -> None:
    gateway = start(started, settings_for(srv, tmp_path, max_wait_seconds=0.5))
    _a_spans, b_spans = two_services()  # service A never exports (not instrumented for Prefactor, or lost)
    assert gateway.accept("Bearer ingress-1", request_of(b_spans)).rejected_spans == 0
    assert wait_for(lambda: all_finished(srv, 1), 30)
    stored = stored_once(srv)
    assert len(stored) == 2
    by_name = {span["payload"]["name"]: span for span in stored.values()}
    top = by_name["execute_tool search"]
    assert top["parent_span_id"] is None and top["payload"]["metadata"]["orphaned"] is True
    assert by_name["db query"]["parent_span_id"] == top["id"]
    (instance,) = srv.instances()
    assert instance["status"] == "complete" and instance["finished_at"] is not None
    assert all(span["status"] != "active" for span in stored.values())
    stats = gateway.stats()["pipelines"]["default.default"]
    assert stats["runs_finished_without_root"] == 1 and stats["spans_dropped"] == 0
