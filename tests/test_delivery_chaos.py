"""Delivery under a bad day: a chaos mix of faults on the local server, and bad input from the app."""

from __future__ import annotations

import math

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

from prefactor_otel.devserver import DevServer, Fault
from tests.spans import Collector, exporter_for

TOKEN = "pf_chaos_token"
# 10,000 spans under chaos, as four independent runs of 250 traces (10 spans each) with their own fault draws:
# each run is mostly waiting on retry backoff, so the four wait side by side on parallel test workers
CHAOS_SEEDS = (20261128, 20261130, 20261131, 20261132)
TRACES_PER_RUN = 250
SPANS_PER_TRACE = 10


def _trace(tracer, n: int) -> None:
    with tracer.start_as_current_span(f"invoke_agent run-{n}", attributes={"gen_ai.operation.name": "invoke_agent"}):
        for step in range(3):
            with tracer.start_as_current_span(f"chat {step}", attributes={"gen_ai.operation.name": "chat"}):
                with tracer.start_as_current_span("http"):
                    pass
            with tracer.start_as_current_span(f"execute_tool t{step}", attributes={"gen_ai.tool.name": "t"}):
                pass


def add_chaos(srv: DevServer, *, seed: int, slow: bool = True) -> None:
    """20% 5xx, 10% 429 with Retry-After, 5% dropped connections, 5% committed-then-failed (the duplicate trap),
    and (`slow`) 5% slow answers, drawn with a fixed seed."""
    srv.faults.seed(seed)
    faults = [
        Fault(status=503, probability=0.20, times=-1),
        Fault(status=429, retry_after="0.05", probability=0.10, times=-1),
        Fault(drop_connection=True, probability=0.05, times=-1),
        Fault(commit_then_fail=True, status=500, probability=0.05, times=-1),
    ]
    if slow:
        faults.append(Fault(delay_s=0.2, probability=0.05, times=-1))
    for fault in faults:
        srv.add_fault(fault)


@pytest.mark.parametrize("seed", CHAOS_SEEDS)
def test_chaos_every_span_exactly_once_with_the_right_parent(seed: int) -> None:
    with DevServer(token=TOKEN) as srv:
        add_chaos(srv, seed=seed)
        exporter = exporter_for(
            srv,
            finish_grace_seconds=0,
            export_timeout=60,
            max_items_per_request=200,
        )
        collector = Collector()
        provider = TracerProvider(resource=Resource.create({"service.name": "chaos"}))
        provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=20_000, schedule_delay_millis=50))
        provider.add_span_processor(SimpleSpanProcessor(collector))
        tracer = provider.get_tracer("chaos")
        for n in range(TRACES_PER_RUN):
            _trace(tracer, n)
        provider.force_flush(120_000)
        exporter._config = exporter._config.replace(shutdown_timeout=60)
        provider.shutdown()

        assert len(collector.spans) == TRACES_PER_RUN * SPANS_PER_TRACE
        stored = srv.spans()
        assert len(stored) == len(collector.spans)
        by_otel = {(s["payload"]["trace_id"], s["payload"]["span_id"]): s for s in stored}
        assert len(by_otel) == len(collector.spans)  # exactly once
        for otel in collector.spans:
            t = f"{otel.context.trace_id:032x}"
            s = by_otel[(t, f"{otel.context.span_id:016x}")]
            if otel.parent is None:
                assert s["parent_span_id"] is None
            else:
                assert s["parent_span_id"] == by_otel[(t, f"{otel.parent.span_id:016x}")]["id"]
        instances = srv.instances()
        assert len(instances) == TRACES_PER_RUN and all(i["status"] == "complete" for i in instances)

        stats = exporter.stats()
        faulted = [r for r in srv.requests if r.path == "/api/v1/bulk" and r.status != 200]
        assert faulted, "the chaos mix injected no fault"
        assert stats["retries"] == len(faulted)  # every failed attempt was retried and counted
        assert stats["requests"] == len([r for r in srv.requests if r.path == "/api/v1/bulk"])
        assert stats["spans_exported"] == len(collector.spans) and stats["spans_dropped"] == 0


def test_bad_input_never_reaches_the_app_and_is_delivered_or_counted():
    with DevServer(token=TOKEN) as srv:
        exporter = exporter_for(
            srv,
            finish_grace_seconds=0,
        )
        collector = Collector()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        provider.add_span_processor(SimpleSpanProcessor(collector))
        tracer = provider.get_tracer("bad")
        with tracer.start_as_current_span("root"):
            with tracer.start_as_current_span("megabyte", attributes={"x": "é" * 500_000}):
                pass
            with tracer.start_as_current_span("many") as span:
                for i in range(10_000):
                    span.set_attribute(f"k{i}", i)
            with tracer.start_as_current_span("floats", attributes={"nan": math.nan, "inf": -math.inf}):
                pass
            with tracer.start_as_current_span("surrogates", attributes={"s": "bad \udc80 half", "l": ["\ud800"]}):
                pass
            with tracer.start_as_current_span("nested", attributes={"j": "[" * 5000 + "]" * 5000}):
                pass
            with tracer.start_as_current_span(""):
                pass
            span = tracer.start_span("zero", start_time=1_000_000_000_000_000_000)
            span.end(end_time=1_000_000_000_000_000_000)
            span = tracer.start_span("negative", start_time=1_000_000_000_500_000_000)
            span.end(end_time=1_000_000_000_000_000_000)
        provider.shutdown()
        stats = exporter.stats()
        stored = {s["payload"]["name"] for s in srv.spans()}
        names = {s.name for s in collector.spans}
        assert stats["spans_received"] == len(names)
        # each span is either stored or counted as dropped with a reason
        assert len(stored) + stats["spans_dropped"] == len(names)
        assert stats["spans_dropped"] == 0, stats["dropped_by_reason"]
        assert stored == names
