"""Span starts read on the sending thread (pipeline/starts.py): the fast path over the SDK's own span classes reads
exactly what the public properties say, for every kind of span start; any other span object takes the public path.
Real spans from the real OTel SDK, started by real tracers (with their attributes at start, as instrumentations
set them)."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import trace as trace_api
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import Decision, StaticSampler
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from prefactor_otel.mapping.conventions import AGENT, classify
from prefactor_otel.mapping.payload import SDK_SPAN_CLASSES, sdk_span_classes
from prefactor_otel.mapping.values import plain_attributes
from prefactor_otel.pipeline.starts import LivePolicy, StartedSpan, read_start


class _Started(SpanProcessor):
    """Keeps every span as on_start hands it over (what PrefactorSpanProcessor queues)."""

    def __init__(self) -> None:
        self.spans: list[Span] = []

    def on_start(self, span: Span, parent_context: Any = None) -> None:
        self.spans.append(span)


def _public_read(span: ReadableSpan) -> StartedSpan | None:
    """What read_start returned before the fast path: the public properties only."""
    context = span.context
    if context is None or not context.is_valid or not context.trace_flags.sampled:
        return None
    if span.start_time is None:
        return None
    parent = span.parent
    parent_id = parent.span_id if parent is not None and parent.is_valid else None
    remote = bool(parent_id is not None and parent is not None and parent.is_remote)
    return StartedSpan(context.trace_id, context.span_id, parent_id, remote, span.start_time, span)


def _public_wants(mode: str, started: StartedSpan) -> bool:
    if mode == "none":
        return False
    if mode == "all" or started.is_local_root:
        return True
    return classify(plain_attributes(started.span.attributes), started.span.name).schema_name == AGENT


def _started_spans() -> list[Span]:
    """Roots, children, remote parents, invalid parents, GenAI agent/LLM/tool spans, plain spans, no attributes."""
    keep = _Started()
    provider = TracerProvider()
    provider.add_span_processor(keep)
    tracer = provider.get_tracer("starts-test")
    remote = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    invalid_parent = SpanContext(0, 0, is_remote=False)
    with tracer.start_as_current_span("root", attributes={"http.method": "GET"}):
        with tracer.start_as_current_span("invoke_agent planner", attributes={"gen_ai.operation.name": "invoke_agent"}):
            tracer.start_span(
                "chat gpt", attributes={"gen_ai.operation.name": "chat", "gen_ai.request.model": "m"}
            ).end()
            tracer.start_span("tool", attributes={"gen_ai.tool.name": "search"}).end()
            tracer.start_span("AgentExecutor", attributes={"openinference.span.kind": "AGENT"}).end()
            tracer.start_span("plain child").end()
    tracer.start_span("from remote", context=trace_api.set_span_in_context(NonRecordingSpan(remote))).end()
    tracer.start_span("invalid parent", context=trace_api.set_span_in_context(NonRecordingSpan(invalid_parent))).end()
    tracer.start_span(
        "agent under remote",
        context=trace_api.set_span_in_context(NonRecordingSpan(remote)),
        attributes={"traceloop.span.kind": "agent"},
    ).end()
    return keep.spans


def test_the_sdk_span_classes_take_the_fast_path() -> None:
    """The import-time check passed for the installed SDK: its span classes are read through their fields."""
    spans = _started_spans()
    assert spans and {type(span) for span in spans} <= SDK_SPAN_CLASSES


@pytest.mark.parametrize("mode", ["agent", "all", "none"])
def test_read_start_and_live_policy_match_the_public_properties(mode: str) -> None:
    policy = LivePolicy(mode)
    spans = _started_spans()
    read = [read_start(span) for span in spans]
    assert read == [_public_read(span) for span in spans]
    assert all(type(started) is StartedSpan for started in read)
    wanted = [policy.wants(started) for started in read if started is not None]
    assert wanted == [_public_wants(mode, started) for started in read if started is not None]
    if mode == "agent":  # the local roots and the agent-typed spans, by attributes set at start
        names = [started.span.name for started in read if started is not None and policy.wants(started)]
        assert names == [
            "root",
            "invoke_agent planner",
            "AgentExecutor",
            "from remote",
            "invalid parent",
            "agent under remote",
        ]


def test_a_recorded_but_unsampled_span_is_not_read() -> None:
    """RECORD_ONLY: processors see the span start, its flags say unsampled, the exporter never gets it."""
    keep = _Started()
    provider = TracerProvider(sampler=StaticSampler(Decision.RECORD_ONLY))
    provider.add_span_processor(keep)
    with provider.get_tracer("record-only").start_as_current_span("recorded", attributes={"k": "v"}):
        pass
    assert len(keep.spans) == 1 and not keep.spans[0].context.trace_flags.sampled
    assert read_start(keep.spans[0]) is None and _public_read(keep.spans[0]) is None


class _Wrapped(ReadableSpan):
    """A span class of its own whose properties are not the SDK's: read through them, never through fields."""

    @property
    def context(self) -> SpanContext:
        return SpanContext(0x77, 0x88, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))

    @property
    def name(self) -> str:
        return "wrapped"


def test_another_span_class_is_read_through_its_public_properties() -> None:
    inner = SpanContext(0x1, 0x2, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    parent = SpanContext(0x1, 0x3, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    span = _Wrapped(
        name="inner", context=inner, parent=parent, start_time=10, attributes={"gen_ai.operation.name": "invoke_agent"}
    )
    assert type(span) not in SDK_SPAN_CLASSES
    started = read_start(span)
    assert started == StartedSpan(0x77, 0x88, 0x3, True, 10, span)
    assert LivePolicy("agent").wants(started)  # a local root (remote parent)
    local_parent = SpanContext(0x1, 0x3, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    child = _Wrapped(name="inner", context=inner, parent=local_parent, start_time=10, attributes={"k": "v"})
    started_child = read_start(child)
    assert started_child is not None and not started_child.is_local_root
    assert LivePolicy("agent").wants(started_child) is False  # classified by its public name and attributes


def test_an_sdk_whose_fields_do_not_hold_what_its_properties_return_is_read_through_the_properties(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The failure mode of the private read: a future SDK that keeps the field names but computes a property
    # differently. The import-time probe must then trust no class, and read_start still gives the public answer.
    assert sdk_span_classes()  # this SDK: the fields hold
    monkeypatch.setattr(ReadableSpan, "name", property(lambda self: "renamed"))
    assert sdk_span_classes() == frozenset()
    monkeypatch.undo()
    monkeypatch.setattr(ReadableSpan, "start_time", property(lambda self: 1))
    assert sdk_span_classes() == frozenset()
