"""How map_span reads a span (mapping/payload.py): spans of the SDK's own classes through the fields their
properties return (`_read_fields`), any other span object through the public properties (`_read_properties`). The
two give the same answer on every kind of real span (ended and started, events, links, limits that dropped some,
remote and invalid parents, error status, every kind); another span class, or an SDK whose fields no longer hold
what its properties return, is read through the properties. Real spans from the real OTel SDK."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import trace as trace_api
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from prefactor_otel.mapping import MappingError, MappingOptions, map_span, payload

SAMPLED = TraceFlags(TraceFlags.SAMPLED)


class _Keep(SpanProcessor):
    """Every span as on_start hands it over (live, still open) and as on_end hands it over (ended)."""

    def __init__(self) -> None:
        self.started: list[Span] = []
        self.ended: list[ReadableSpan] = []

    def on_start(self, span: Span, parent_context: Any = None) -> None:
        self.started.append(span)

    def on_end(self, span: ReadableSpan) -> None:
        self.ended.append(span)


def _spans() -> _Keep:
    keep = _Keep()
    provider = TracerProvider(span_limits=SpanLimits(max_span_attributes=3, max_events=2, max_links=1))
    provider.add_span_processor(keep)
    tracer = provider.get_tracer("read-test", "2.0")
    remote = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=SAMPLED)
    invalid_parent = SpanContext(0, 0, is_remote=False)
    linked = SpanContext(0x123, 0x456, is_remote=False, trace_flags=SAMPLED)
    with tracer.start_as_current_span("root", kind=SpanKind.SERVER, attributes={"http.method": "GET"}) as root:
        root.add_event("started", {"n": 1})
        with tracer.start_as_current_span("chat gpt", attributes={"gen_ai.operation.name": "chat"}):
            tracer.start_span(
                "too many", attributes={"a": 1, "b": "x", "c": 2.5, "d": (1, 2)}, links=[Link(linked), Link(linked)]
            ).end()
        failing = tracer.start_span("fails", kind=SpanKind.CLIENT)
        failing.record_exception(ValueError("boom"))
        for index in range(3):
            failing.add_event(f"event {index}")
        failing.set_status(Status(StatusCode.ERROR, "it failed"))
        failing.end()
    tracer.start_span("from remote", context=trace_api.set_span_in_context(NonRecordingSpan(remote))).end()
    tracer.start_span("invalid parent", context=trace_api.set_span_in_context(NonRecordingSpan(invalid_parent))).end()
    tracer.start_span("no attributes", kind=SpanKind.PRODUCER).end()
    open_span = tracer.start_span("still open", attributes={"gen_ai.operation.name": "invoke_agent"})
    open_span.add_event("midway")
    keep.open_span = open_span  # type: ignore[attr-defined]
    return keep


def test_the_sdk_span_classes_are_read_through_their_fields() -> None:
    keep = _spans()
    assert keep.ended and {type(span) for span in keep.ended + keep.started} <= payload.SDK_SPAN_CLASSES


def test_fields_and_properties_read_the_same() -> None:
    keep = _spans()
    spans: list[ReadableSpan] = [*keep.ended, *keep.started]
    dropped = []
    for span in spans:
        fields = payload._read_fields(span)
        assert fields is not None and fields == payload._read_properties(span), span.name
        dropped.append(fields[14])
    assert (1, 0, 1) in dropped and (0, 2, 0) in dropped  # the limits dropped an attribute, events, a link
    by_name = {span.name: payload._read_fields(span) for span in keep.ended}
    assert by_name["from remote"][3:5] == (0xDEF, True)  # type: ignore[index]
    assert by_name["invalid parent"][3:5] == (None, False)  # type: ignore[index]


def test_records_are_the_same_through_either_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    keep = _spans()
    options = MappingOptions()
    fast = [map_span(span, options) for span in keep.ended]
    live = [map_span(span, options, started=True) for span in keep.started]
    monkeypatch.setattr(payload, "SDK_SPAN_CLASSES", frozenset())
    assert [map_span(span, options) for span in keep.ended] == fast
    assert [map_span(span, options, started=True) for span in keep.started] == live


class _Wrapped(ReadableSpan):
    """A span class of its own whose properties are not the SDK's: read through them, never through fields."""

    @property
    def name(self) -> str:
        return "wrapped name"

    @property
    def attributes(self) -> Any:
        return {"from": "property"}


def test_another_span_class_is_read_through_its_public_properties() -> None:
    context = SpanContext(0x1, 0x2, is_remote=False, trace_flags=SAMPLED)
    span = _Wrapped(name="field name", context=context, start_time=10, end_time=20, attributes={"from": "field"})
    assert type(span) not in payload.SDK_SPAN_CLASSES
    record = map_span(span, MappingOptions())
    assert record.name == "wrapped name"
    assert record.payload["metadata"]["from"] == "property"  # type: ignore[index]


def test_a_span_without_a_valid_context_is_refused_by_either_reader() -> None:
    invalid = ReadableSpan(name="x", context=SpanContext(0, 0, is_remote=False), start_time=1, end_time=2)
    none = ReadableSpan(name="x", context=None, start_time=1, end_time=2)
    for span in (invalid, none):
        with pytest.raises(MappingError):
            map_span(span)
        with pytest.raises(MappingError):
            payload._read_properties(span)


def test_an_sdk_whose_fields_do_not_hold_what_its_properties_return_is_read_through_the_properties(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The failure mode of the private read: a future SDK that keeps the field names but computes a property
    # differently. The import-time probe must then trust no class, and map_span still maps through the properties.
    assert payload.sdk_span_classes()  # this SDK: the fields hold
    for name, value in (("name", "renamed"), ("end_time", 1), ("kind", SpanKind.CONSUMER), ("dropped_events", 9)):
        monkeypatch.setattr(ReadableSpan, name, property(lambda self, value=value: value))
        assert payload.sdk_span_classes() == frozenset(), name
        monkeypatch.undo()
    monkeypatch.setattr(ReadableSpan, "attributes", property(lambda self: {"other": 1}))
    assert payload.sdk_span_classes() == frozenset()
