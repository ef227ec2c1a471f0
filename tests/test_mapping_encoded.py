"""`map_span(..., encoded=True)` (mapping/payload.py), what the exporter's `_map` calls: the record it gives is the
record `map_span` gives with each payload then encoded by `encode_json` (what `_map` did before), byte for byte, on
every kind of span (the benchmark's two workloads, every recorded GenAI fixture, failing and live spans, events,
links, remote parents) under every option set `benchmarks/mapping_diff.py` uses; a payload the encoder refuses
stays a dict, and so does the result after it. Also the span read's failure modes for the fields it now reads
directly (the Status's, the attribute dict's). Real SDK spans, the real encoder."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace as trace_api
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from prefactor_otel.mapping import MappingOptions, map_span, payload
from prefactor_otel.mapping.values import NO_RESULT, encode_json
from tests.fixtures.semconv import replay

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
FIELDS = (
    "trace_id",
    "span_id",
    "parent_span_id",
    "parent_is_remote",
    "name",
    "schema_name",
    "status",
    "start_time_ns",
    "end_time_ns",
    "payload",
    "result_payload",
    "scope",
    "resource",
    "convention",
)
OPTION_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "no redaction": {"redact_defaults": False},
    "limits+redaction": {"max_input_length": 100, "redact_keys": ("order_id",), "redact_patterns": ("refund",)},
    "capture off": {"capture_inputs": False, "capture_outputs": False},
    "callback": {"redact_callback": lambda path, value: value.replace("refund", "[r]") if "name" in path else value},
}


class _Keep(SpanProcessor):
    def __init__(self) -> None:
        self.started: list[ReadableSpan] = []
        self.ended: list[ReadableSpan] = []

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.started.append(span)

    def on_end(self, span: ReadableSpan) -> None:
        self.ended.append(span)


def _odd_spans() -> _Keep:
    """Spans of every envelope shape: kinds, error status with and without an exception, events, links, limits
    that dropped some, a remote parent, a lone surrogate, non-finite and sequence values, GenAI and plain."""
    keep = _Keep()
    provider = TracerProvider(span_limits=SpanLimits(max_span_attributes=6, max_events=2, max_links=1))
    provider.add_span_processor(keep)
    tracer = provider.get_tracer("encoded-test", "1.0")
    remote = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    linked = SpanContext(0x123, 0x456, is_remote=False)
    with tracer.start_as_current_span("root", kind=SpanKind.SERVER, attributes={"http.method": "GET"}) as root:
        root.add_event("started", {"n": 1, "password": "hunter2"})
        for kind in SpanKind:
            tracer.start_span(f"kind {kind.name}", kind=kind, attributes={"v": (1, 2), "f": float("nan")}).end()
        with tracer.start_as_current_span("chat gpt", attributes={"gen_ai.operation.name": "chat"}) as chat:
            chat.set_attribute("gen_ai.usage.input_tokens", 3)
            chat.set_status(Status(StatusCode.ERROR, "refused"))
        failing = tracer.start_span("fails", links=[Link(linked, {"l": "x"}), Link(linked)])
        failing.record_exception(ValueError("boom"))
        for index in range(3):
            failing.add_event(f"event {index}")
        failing.set_status(Status(StatusCode.ERROR, "it failed"))
        failing.end()
        errored = tracer.start_span("error type only", attributes={"error.type": "<class 'x.Timeout'>"})
        errored.set_status(Status(StatusCode.ERROR))
        errored.end()
        many = {f"k{index}": index for index in range(9)}
        tracer.start_span("dropped", attributes={**many, "s": "a\ud800b", "inf": float("inf")}).end()
        with tracer.start_as_current_span(
            "execute_tool get_weather",
            attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.call.arguments": '{"city": "Oslo"}'},
        ):
            pass
    tracer.start_span("from remote", context=trace_api.set_span_in_context(NonRecordingSpan(remote))).end()
    tracer.start_span("open", attributes={"gen_ai.operation.name": "invoke_agent"})  # never ended: live only
    return keep


def _workload_spans() -> list[ReadableSpan]:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from workload import SpanSource
    finally:
        sys.path.remove(str(BENCHMARKS))
    return [span for workload in ("realistic", "small") for span in SpanSource(seed=7, workload=workload).spans(300)]


def _fixture_spans() -> list[ReadableSpan]:
    return [
        span for fixture in sorted(path.name for path in replay.HERE.glob("*.json")) for span in replay.load(fixture)
    ]


def _as_before(record: Any) -> tuple[Any, ...]:
    """The record as the exporter's `_map` made it before: `map_span`, then each payload by `encode_json`."""
    try:
        record.payload = encode_json(record.payload)
        record.result_payload = encode_json(record.result_payload)
    except (TypeError, ValueError):
        pass
    return tuple(getattr(record, name) for name in FIELDS)


def _fields(record: Any) -> tuple[Any, ...]:
    return tuple(getattr(record, name) for name in FIELDS)


def test_encoded_records_are_the_mapped_records_encoded_byte_for_byte() -> None:
    spans = [*_odd_spans().ended, *_workload_spans(), *_fixture_spans()]
    compared = 0
    for label, kwargs in OPTION_SETS.items():
        options = MappingOptions(**kwargs)
        for span in spans:
            encoded = map_span(span, options, encoded=True)
            assert type(encoded.payload) is bytes and type(encoded.result_payload) is bytes, (label, span.name)
            assert _fields(encoded) == _as_before(map_span(span, options)), (label, span.name)
            compared += 1
    assert compared > 2000


def test_started_spans_encode_like_their_dicts() -> None:
    keep = _odd_spans()
    options = MappingOptions()
    for span in keep.started:
        encoded = map_span(span, options, started=True, encoded=True)
        assert encoded.result_payload == b"{}" and encoded.status == "active"
        assert _fields(encoded) == _as_before(map_span(span, options, started=True)), span.name


def test_a_plain_span_without_error_shares_the_one_empty_result() -> None:
    keep = _odd_spans()
    plain = next(span for span in keep.ended if span.name == "root")
    record = map_span(plain, encoded=True)
    assert record.result_payload is NO_RESULT
    assert json.loads(record.result_payload) == {"outputs": {}, "token_usage": None, "error": None}
    failed = map_span(next(span for span in keep.ended if span.name == "fails"), encoded=True)
    assert json.loads(failed.result_payload)["error"]["message"] == "it failed"  # (the limits dropped the exception)


def test_a_payload_the_encoder_refuses_stays_a_dict_and_the_result_after_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # The failure mode of encoding while mapping: what every encoder refuses (ValueError from the last one) leaves
    # the payload a dict, as `_map` left it before; the send path then reports it. Simulated: the mapping itself
    # never builds such a value.
    keep = _odd_spans()
    spans = [span for span in keep.ended if span.name in ("root", "fails", "chat gpt")]
    expected = [map_span(span) for span in spans]

    def refuse(value: dict[str, Any]) -> bytes:
        raise ValueError("cannot be JSON")

    monkeypatch.setattr(payload, "ORJSON_DUMPS", None)
    monkeypatch.setattr(payload, "to_json", refuse)
    for span, mapped in zip(spans, expected, strict=True):
        record = map_span(span, encoded=True)
        assert type(record.payload) is dict and type(record.result_payload) is dict
        assert _fields(record) == _fields(mapped)

    refused_results: list[dict[str, Any]] = []

    def refuse_results(value: dict[str, Any]) -> bytes:
        if "outputs" in value:
            refused_results.append(value)
            raise ValueError("cannot be JSON")
        return encode_json(value)

    monkeypatch.setattr(payload, "to_json", refuse_results)
    failed = map_span(spans[1], encoded=True)  # an error: its result is encoded, not the shared constant
    assert type(failed.payload) is bytes and failed.result_payload == refused_results[-1]


def test_without_orjson_the_encoded_payloads_are_pydantic_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    keep = _odd_spans()
    expected = [_fields(map_span(span, encoded=True)) for span in keep.ended]
    monkeypatch.setattr(payload, "ORJSON_DUMPS", None)  # to_json, then: pydantic-core (same bytes)
    assert [_fields(map_span(span, encoded=True)) for span in keep.ended] == expected


def test_a_status_whose_fields_do_not_hold_what_its_properties_return_turns_the_field_read_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The span read takes the Status's and the attribute dict's fields directly now: a future SDK computing either
    # property differently must make the import-time probe trust no class (every span then read by properties).
    assert payload.sdk_span_classes()
    for name, value in (("status_code", StatusCode.OK), ("description", "other")):
        monkeypatch.setattr(Status, name, property(lambda self, value=value: value))
        assert payload.sdk_span_classes() == frozenset(), name
        monkeypatch.undo()
    monkeypatch.setattr(BoundedAttributes, "copy", lambda self: {"other": 1})
    assert payload.sdk_span_classes() == frozenset()
    monkeypatch.undo()
    assert payload.sdk_span_classes()


def test_every_span_kind_is_named() -> None:
    keep = _odd_spans()
    kinds = {span.name: map_span(span, encoded=True) for span in keep.ended if span.name.startswith("kind ")}
    for kind in SpanKind:
        assert json.loads(kinds[f"kind {kind.name}"].payload)["kind"] == kind.name.lower()
