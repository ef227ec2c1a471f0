"""`gateway/otlp.py` decodes what the OTel SDK's own encoder writes back into the spans the SDK exported.

Spans come from a real TracerProvider (tests/spans.py, and a span using every field here) and from the recorded
GenAI fixtures (tests/fixtures/semconv); they are encoded by the real `opentelemetry-exporter-otlp-proto-common`
encoder, serialized, parsed and decoded by us, and compared field by field with what the SDK held. Then the
mapping: the same spans mapped directly and through encode -> decode give identical `SpanRecord`s and identical
payload bytes (what the in-process exporter and the gateway send). The same requests as OTLP/JSON (written from
the protobuf by the OTLP specification's rules: hex ids, lowerCamelCase, enums as integers, int64 as strings)
decode to the same spans. Bad input gives `OtlpDecodeError` or a counted rejection, never anything else, also
under a bounded loop of random mutations.

What is not carried: the W3C trace flags. The SDK's encoder leaves bits 0-7 of a span's `flags` zero, so a
decoded span is marked sampled (every exported span was) and nothing else; the comparison leaves them out.
"""

from __future__ import annotations

import base64
import gzip
import json
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from prefactor_otel.gateway import otlp
from prefactor_otel.gateway.otlp import DecodedSpans, OtlpDecodeError
from prefactor_otel.mapping import MappingOptions, SpanRecord, map_span
from prefactor_otel.transport.wire import encode_json
from tests.fixtures.semconv import replay
from tests.spans import Collector, agent_trace, make_provider

FIXTURES = sorted(path.name for path in replay.HERE.glob("*.json"))
TRACE = 0x0AF7651916CD43DD8448EB211C80319C
REMOTE_PARENT = SpanContext(TRACE, 0x00F067AA0BA902B7, is_remote=True, trace_flags=TraceFlags(1))


# --------------------------------------------------------------------------- spans, encoded


def agent_spans() -> list[ReadableSpan]:
    provider, collector = make_provider()
    agent_trace(provider)
    with pytest.raises(RuntimeError):
        agent_trace(provider, fail=True)
    return collector.spans


def every_field_spans() -> list[ReadableSpan]:
    """Spans using every field the encoder writes: a remote parent and trace state, links with attributes (one to
    a remote context), events, every kind and status, attribute values of every type (arrays, bytes, kvlists, an
    empty value), a scope with a schema URL and attributes, a Resource with one, and counts the SDK's limits drop."""
    collector = Collector()
    provider = TracerProvider(
        resource=Resource({"service.name": "every-field", "deployment.environment": "test"}, "https://schema/1.26.0"),
        span_limits=SpanLimits(max_span_attributes=15, max_events=2, max_links=2, max_event_attributes=2),
    )
    provider.add_span_processor(SimpleSpanProcessor(collector))
    tracer = provider.get_tracer("tests.every", "9.9", schema_url="https://schema/scope", attributes={"scope.k": 1})
    from opentelemetry import trace

    parent_ctx = trace.set_span_in_context(
        trace.NonRecordingSpan(
            SpanContext(
                TRACE,
                REMOTE_PARENT.span_id,
                is_remote=True,
                trace_flags=TraceFlags(1),
                trace_state=TraceState([("vendor", "abc"), ("pf@run", "x-1")]),
            )
        )
    )
    link_remote = Link(REMOTE_PARENT, {"link.kind": "follows", "link.n": 2})
    link_local = Link(SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=TraceFlags(1)))
    link_dropped = Link(SpanContext(0x99, 0x98, is_remote=False, trace_flags=TraceFlags(1)))
    with tracer.start_as_current_span(
        "invoke_agent every",
        context=parent_ctx,
        kind=SpanKind.SERVER,
        links=[link_dropped, link_remote, link_local],  # the SDK drops the oldest
        attributes={
            "dropped.first": "the SDK drops the oldest",
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "every",
            "s": "text é ✓",
            "b": True,
            "i": -(2**63),
            "f": 1.5,
            "nan": float("nan"),
            "strs": ("a", "b"),
            "ints": (1, 2, 3),
            "floats": (0.5,),
            "bools": (True, False),
            "empty": (),
            "raw": b"\x00\xffbytes",
            "nested": {"k": "v", "deep": {"list": [1, "two", None]}},
            "nothing": None,
        },
    ) as agent:
        agent.add_event("first: dropped by the SDK")
        agent.add_event("started", {"n": 1, "tags": ("x",), "kept": "yes", "tags.kept": ("y", "z")})
        agent.add_event("second", timestamp=1_790_000_000_000_000_123)
        for kind in (SpanKind.CLIENT, SpanKind.PRODUCER, SpanKind.CONSUMER, SpanKind.INTERNAL):
            with tracer.start_as_current_span(f"child {kind.name}", kind=kind) as child:
                if kind is SpanKind.CLIENT:
                    child.set_status(Status(StatusCode.OK))
                if kind is SpanKind.PRODUCER:
                    child.set_status(Status(StatusCode.ERROR, "it broke: quota"))
        try:
            with tracer.start_as_current_span("chat broken", attributes={"gen_ai.operation.name": "chat"}):
                raise ValueError("model refused")
        except ValueError:
            pass
    other = provider.get_tracer("")  # a scope with no name: the encoder writes an empty scope
    with other.start_as_current_span("unscoped"):
        pass
    return collector.spans


def fixture_spans(name: str) -> list[ReadableSpan]:
    return replay.load(name, resource=Resource({"service.name": "replayed", "service.version": "2"}))


SOURCES: dict[str, Callable[[], list[ReadableSpan]]] = {
    "agent_trace": agent_spans,
    "every_field": every_field_spans,
    **{name: (lambda name=name: fixture_spans(name)) for name in FIXTURES},  # type: ignore[misc]
}


@pytest.fixture(params=sorted(SOURCES))
def sdk_spans(request: pytest.FixtureRequest) -> list[ReadableSpan]:
    spans = SOURCES[request.param]()
    assert spans
    return spans


def protobuf_body(spans: Sequence[ReadableSpan]) -> bytes:
    body: bytes = encode_spans(spans).SerializeToString()
    return body


def otlp_json(request: ExportTraceServiceRequest, *, ints_as_numbers: bool = False) -> bytes:
    """The request as OTLP/JSON, by the OTLP specification's rules: protobuf's JSON mapping (lowerCamelCase,
    enums as integers, int64 as strings, bytes as base64) except trace and span ids, which are hex."""
    document = json_format.MessageToDict(request, use_integers_for_enums=True)

    def fix(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("traceId", "spanId", "parentSpanId") and isinstance(value, str):
                    node[key] = base64.b64decode(value).hex()
                elif ints_as_numbers and key in ("startTimeUnixNano", "endTimeUnixNano", "intValue"):
                    node[key] = int(value)
                else:
                    fix(value)
        elif isinstance(node, list):
            for item in node:
                fix(item)

    fix(document)
    return json.dumps(document).encode()


def decoded(body: bytes, *, json_body: bool = False) -> DecodedSpans:
    request = otlp.parse_json(body) if json_body else otlp.parse_protobuf(body)
    return otlp.decode_spans(request)


# --------------------------------------------------------------------------- comparing spans


def context_fields(context: SpanContext | None) -> Any:
    # trace flags left out: OTLP's Python encoder does not write them (see the module docstring)
    if context is None:
        return None
    return (context.trace_id, context.span_id, context.is_remote, dict(context.trace_state))


def value_fields(value: Any) -> Any:
    """Attribute values compared by type too (True == 1 and 1 == 1.0 in Python), NaN equal to itself."""
    if isinstance(value, tuple):
        return ("tuple", tuple(value_fields(v) for v in value))
    if isinstance(value, dict):
        return ("dict", {k: value_fields(v) for k, v in value.items()})
    if isinstance(value, float) and value != value:
        return ("float", "nan")
    return (type(value).__name__, value)


def attribute_fields(attributes: Any) -> Any:
    return {key: value_fields(value) for key, value in (attributes or {}).items()}


def span_fields(span: ReadableSpan) -> dict[str, Any]:
    scope = span.instrumentation_scope
    return {
        "name": span.name,
        "context": context_fields(span.context),
        "parent": context_fields(span.parent),
        "kind": span.kind,
        "status": (span.status.status_code, span.status.description),
        "start": span.start_time,
        "end": span.end_time,
        "attributes": attribute_fields(span.attributes),
        "events": [(e.name, e.timestamp, attribute_fields(e.attributes), e.dropped_attributes) for e in span.events],
        "links": [
            (context_fields(link.context), attribute_fields(link.attributes), link.dropped_attributes)
            for link in span.links
        ],
        "dropped": (span.dropped_attributes, span.dropped_events, span.dropped_links),
        "resource": (attribute_fields(span.resource.attributes), span.resource.schema_url),
        # OTLP cannot tell a scope version "" from none: both decode to None (the mapping reads them alike)
        "scope": None
        if scope is None or not (scope.name or scope.version or scope.schema_url or scope.attributes)
        else (scope.name, scope.version or None, scope.schema_url, attribute_fields(scope.attributes)),
    }


def record_fields(record: SpanRecord) -> dict[str, Any]:
    fields = {name: getattr(record, name) for name in SpanRecord.__slots__}  # type: ignore[attr-defined]
    fields["resource"] = dict(record.resource)
    return fields


# --------------------------------------------------------------------------- SDK spans, every field


def test_sdk_spans_decode_to_what_the_sdk_exported(sdk_spans: list[ReadableSpan]) -> None:
    result = decoded(protobuf_body(sdk_spans))

    assert (result.rejected, result.message) == (0, "")
    # The encoder groups spans by Resource and scope: compare by span id
    by_id = {span.context.span_id: span for span in result.spans}
    assert sorted(by_id) == sorted(span.context.span_id for span in sdk_spans)
    for span in sdk_spans:
        assert span_fields(by_id[span.context.span_id]) == span_fields(span), span.name


def test_every_field_is_really_exercised() -> None:
    """The rich spans hold what the comparison claims to cover (so the test above is not vacuous)."""
    spans = {span.name: span for span in decoded(protobuf_body(every_field_spans())).spans}
    agent = spans["invoke_agent every"]
    assert agent.parent is not None and agent.parent.is_remote and agent.parent.span_id == REMOTE_PARENT.span_id
    assert dict(agent.context.trace_state) == {"vendor": "abc", "pf@run": "x-1"}
    assert agent.context.trace_flags.sampled and not agent.context.is_remote
    assert agent.kind is SpanKind.SERVER
    attributes = agent.attributes
    assert attributes["raw"] == b"\x00\xffbytes" and attributes["strs"] == ("a", "b") and attributes["empty"] == ()
    assert attributes["nested"] == {"k": "v", "deep": {"list": (1, "two", None)}} and attributes["nothing"] is None
    assert attributes["i"] == -(2**63) and "dropped.first" not in attributes
    assert (agent.dropped_attributes, agent.dropped_events, agent.dropped_links) == (1, 1, 1)
    assert agent.events[0].dropped_attributes == 2 and dict(agent.events[0].attributes) == {
        "kept": "yes",
        "tags.kept": ("y", "z"),
    }
    assert [link.context.is_remote for link in agent.links] == [True, False]
    assert agent.resource.schema_url == "https://schema/1.26.0"
    scope = agent.instrumentation_scope
    assert scope is not None and (scope.name, scope.version, scope.schema_url) == (
        "tests.every",
        "9.9",
        "https://schema/scope",
    )
    assert dict(scope.attributes) == {"scope.k": 1}
    assert spans["child PRODUCER"].status.description == "it broke: quota"
    assert spans["child CLIENT"].status.status_code is StatusCode.OK
    assert spans["chat broken"].events[0].name == "exception"
    assert spans["unscoped"].instrumentation_scope is None
    # Spans of one ResourceSpans share one Resource (the mapping caches its metadata per Resource)
    assert len({id(span.resource) for span in spans.values()}) == 1


def test_mapping_gives_identical_records_and_payload_bytes(sdk_spans: list[ReadableSpan]) -> None:
    """The issue's 'same spans give byte-identical payloads': map_span over the SDK's spans and over the decoded
    ones, with the default options and with redaction and limits on."""
    result = decoded(protobuf_body(sdk_spans))
    by_id = {span.context.span_id: span for span in result.spans}
    redacting = MappingOptions(redact_patterns=("gpt-4o", "Paris"), max_input_length=40, max_output_length=40)
    for options in (MappingOptions(), redacting):
        for span in sdk_spans:
            direct = map_span(span, options)
            through = map_span(by_id[span.context.span_id], options)
            assert record_fields(through) == record_fields(direct), span.name
            assert encode_json(through.payload) == encode_json(direct.payload)  # type: ignore[arg-type]
            assert encode_json(through.result_payload) == encode_json(direct.result_payload)  # type: ignore[arg-type]
            live = map_span(by_id[span.context.span_id], options, started=True)
            assert encode_json(live.payload) == encode_json(map_span(span, options, started=True).payload)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- OTLP/JSON


@pytest.mark.parametrize("ints_as_numbers", [False, True])
def test_otlp_json_decodes_to_the_same_spans(sdk_spans: list[ReadableSpan], ints_as_numbers: bool) -> None:
    request = encode_spans(sdk_spans)
    from_json = otlp.parse_json(otlp_json(request, ints_as_numbers=ints_as_numbers))

    assert from_json == request  # the very same message, so the very same spans
    result = otlp.decode_spans(from_json)
    assert [span_fields(s) for s in result.spans] == [span_fields(s) for s in otlp.decode_spans(request).spans]


def test_otlp_json_accepts_snake_case_enum_names_and_ignores_unknown_fields() -> None:
    body = {
        "resource_spans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"string_value": "snake"}}]},
                "scope_spans": [
                    {
                        "scope": {"name": "s", "unknownScopeField": 1},
                        "spans": [
                            {
                                "trace_id": "5B8EFFF798038103D269B633813FC60C",  # upper-case hex is hex
                                "span_id": "eee19b7ec3c1b174",
                                "parent_span_id": "",
                                "name": "snake span",
                                "kind": "SPAN_KIND_CLIENT",
                                "start_time_unix_nano": 1_700_000_000_000_000_000,
                                "end_time_unix_nano": "1700000000500000000",
                                "attributes": [
                                    {"key": "n", "value": {"int_value": "7"}},
                                    {"key": "d", "value": {"doubleValue": "NaN"}},
                                    {"key": "u", "value": {"bytesValue": "_-8"}},  # URL-safe base64, unpadded
                                    {"key": "e", "value": {}},
                                ],
                                "status": {"code": "STATUS_CODE_ERROR", "message": "bad"},
                                "somethingNew": {"x": [1, 2]},
                            }
                        ],
                    }
                ],
            }
        ],
        "futureField": True,
    }
    (span,) = decoded(json.dumps(body).encode(), json_body=True).spans
    assert span.context.trace_id == 0x5B8EFFF798038103D269B633813FC60C and span.parent is None
    assert (span.name, span.kind, span.status.status_code, span.status.description) == (
        "snake span",
        SpanKind.CLIENT,
        StatusCode.ERROR,
        "bad",
    )
    assert (span.start_time, span.end_time) == (1_700_000_000_000_000_000, 1_700_000_000_500_000_000)
    assert span.attributes["n"] == 7 and span.attributes["d"] != span.attributes["d"]
    assert span.attributes["u"] == b"\xff\xef" and span.attributes["e"] is None
    assert span.resource.attributes["service.name"] == "snake"


# --------------------------------------------------------------------------- ids, parents, values


def one_span_request(**fields: Any) -> ExportTraceServiceRequest:
    span = {"trace_id": TRACE.to_bytes(16, "big"), "span_id": (7).to_bytes(8, "big"), "name": "s", **fields}
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[Span(**span)])])])


def request_of(*spans: Span) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=list(spans))])])


def test_invalid_ids_reject_that_span_and_keep_the_rest() -> None:
    good = TRACE.to_bytes(16, "big")
    spans = [
        Span(trace_id=good, span_id=(1).to_bytes(8, "big"), name="kept"),
        Span(trace_id=good[:15], span_id=(2).to_bytes(8, "big"), name="short trace id"),
        Span(trace_id=bytes(16), span_id=(3).to_bytes(8, "big"), name="zero trace id"),
        Span(trace_id=good, span_id=bytes(8), name="zero span id"),
        Span(trace_id=good, span_id=b"\x01" * 9, name="long span id"),
        Span(trace_id=good, span_id=(4).to_bytes(8, "big"), parent_span_id=b"\x01\x02", name="short parent"),
        Span(trace_id=good, span_id=(5).to_bytes(8, "big"), parent_span_id=bytes(8), name="zero parent: a root"),
        Span(name="no ids at all"),
    ]
    result = otlp.decode_spans(request_of(*spans))

    assert [span.name for span in result.spans] == ["kept", "zero parent: a root"]
    assert result.spans[1].parent is None
    assert result.rejected == 6
    assert result.message == "6 spans rejected: invalid trace id (16 bytes, not all zero)"
    one = otlp.decode_spans(request_of(spans[3]))
    assert (one.rejected, one.message) == (1, "1 span rejected: invalid span id (8 bytes, not all zero)")


def test_invalid_ids_in_json_reject_the_span() -> None:
    def body(trace_id: Any, span_id: Any, parent: Any = "") -> bytes:
        span = {"traceId": trace_id, "spanId": span_id, "parentSpanId": parent, "name": "x"}
        return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()

    trace_hex = f"{TRACE:032x}"
    for bad in (
        body("zz" * 16, "00f067aa0ba902b7"),  # not hex
        body(trace_hex[:-1], "00f067aa0ba902b7"),  # odd length
        body(trace_hex, "00f067aa0ba902"),  # 7 bytes
        body(trace_hex, "0" * 16),  # all zero
        body(trace_hex, "00f067aa0ba902b7", "xyzxyzxy"),  # parent of 8 characters, not hex
        body(trace_hex, 12345),  # a number
        body(base64.b64encode(TRACE.to_bytes(16, "big")).decode(), "00f067aa0ba902b7"),  # base64 is not hex
    ):
        result = decoded(bad, json_body=True)
        assert (len(result.spans), result.rejected) == (0, 1), bad
    ok = decoded(body(trace_hex, "00f067aa0ba902b7", "00f067aa0ba902b8"), json_body=True)
    assert ok.rejected == 0 and ok.spans[0].parent is not None


def test_invalid_link_ids_drop_the_link_and_count_it() -> None:
    good = Span.Link(trace_id=TRACE.to_bytes(16, "big"), span_id=(9).to_bytes(8, "big"), flags=0x300)
    bad = Span.Link(trace_id=b"\x01", span_id=(9).to_bytes(8, "big"))
    (span,) = otlp.decode_spans(one_span_request(links=[bad, good], dropped_links_count=2)).spans
    assert [link.context.span_id for link in span.links] == [9]
    assert span.links[0].context.is_remote
    assert span.dropped_links == 3


@pytest.mark.parametrize(
    ("flags", "remote"),
    [(0, False), (0x100, False), (0x300, True), (0x200, False), (0x301, True)],  # 0x200 alone: not known
)
def test_parent_is_remote_only_when_the_flags_say_so(flags: int, remote: bool) -> None:
    (span,) = otlp.decode_spans(one_span_request(parent_span_id=(3).to_bytes(8, "big"), flags=flags)).spans
    assert span.parent is not None and span.parent.is_remote is remote
    assert span.context.is_remote is False and span.context.trace_flags.sampled


def nested_value(depth: int, kind: str) -> AnyValue:
    value = AnyValue(string_value="leaf")
    for _ in range(depth):
        if kind == "array":
            value = AnyValue(array_value=ArrayValue(values=[value]))
        else:
            value = AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key="k", value=value)]))
    return value


@pytest.mark.parametrize("kind", ["array", "kvlist"])
def test_values_nested_too_deep_are_dropped_and_counted(kind: str) -> None:
    attributes = [
        KeyValue(key="fits", value=nested_value(otlp.MAX_VALUE_DEPTH, kind)),
        KeyValue(key="too.deep", value=nested_value(otlp.MAX_VALUE_DEPTH + 1, kind)),
        KeyValue(key="", value=AnyValue(string_value="an empty key")),
        KeyValue(key="plain", value=AnyValue(int_value=1)),
    ]
    request = one_span_request(attributes=attributes, dropped_attributes_count=1)
    for req in (request, otlp.parse_json(otlp_json(request))):
        (span,) = otlp.decode_spans(req).spans
        assert sorted(span.attributes) == ["fits", "plain"]
        assert span.dropped_attributes == 3  # the client's one, the too deep one, the empty key
        record = map_span(span)  # the mapping takes it as it is
        assert record.name == "s"


def test_status_kind_and_trace_state_edge_values() -> None:
    from opentelemetry.proto.trace.v1.trace_pb2 import Status as PbStatus

    cases = [
        ({"kind": 0}, lambda s: s.kind is SpanKind.INTERNAL),  # UNSPECIFIED
        ({"kind": 99}, lambda s: s.kind is SpanKind.INTERNAL),
        ({"status": PbStatus(code=1, message="ignored on OK")}, lambda s: s.status.description is None),
        ({"status": PbStatus(code=7)}, lambda s: s.status.status_code is StatusCode.UNSET),
        (
            {"status": PbStatus(code=2)},
            lambda s: (s.status.status_code, s.status.description) == (StatusCode.ERROR, None),
        ),
        ({"trace_state": "a=1, b=2"}, lambda s: dict(s.context.trace_state) == {"a": "1", "b": "2"}),
        ({"trace_state": "Not Valid"}, lambda s: dict(s.context.trace_state) == {}),
        ({"trace_state": "a=1,a=2"}, lambda s: dict(s.context.trace_state) == {}),
        ({"trace_state": ",".join(f"k{i}=v" for i in range(33))}, lambda s: dict(s.context.trace_state) == {}),
    ]
    for fields, check in cases:
        (span,) = otlp.decode_spans(one_span_request(**fields)).spans
        assert check(span), fields


# --------------------------------------------------------------------------- bad input


def span_json(span: object) -> bytes:
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()


def test_bodies_that_are_not_requests_raise_otlp_decode_error() -> None:
    body = protobuf_body(agent_spans())
    rng = random.Random(21)
    secret = b"Bearer sk-live-0123456789abcdef"
    not_protobuf = [
        body[: len(body) // 2],  # truncated
        body[:-1],
        bytes(rng.getrandbits(8) for _ in range(512)),
        b"\xff" * 64,
        secret + b"\x00" * 8,
        b'{"resourceSpans": []}',  # JSON sent as protobuf
        body.replace(b"gpt-4o", b"\xff\xfe-4o"),  # a span name that is not UTF-8
    ]
    assert b"gpt-4o" in body
    for bad in not_protobuf:
        with pytest.raises(OtlpDecodeError) as raised:
            otlp.parse_protobuf(bad)
        assert "sk-live" not in str(raised.value) and len(str(raised.value)) < 120
    not_json = [
        b"",
        b"[]",
        b'"a string"',
        b"null",
        b"{",
        b"\xff\xfe{}",
        body,  # protobuf sent as JSON
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the parser goes
        secret,
        b'{"resourceSpans": {}}',
        span_json({"name": 5}),
        span_json({"startTimeUnixNano": "soon"}),
        span_json({"startTimeUnixNano": -1}),
        span_json({"attributes": [{"key": "k", "value": {"boolValue": 1}}]}),
        span_json({"attributes": [{"key": "k", "value": {"bytesValue": "!"}}]}),
        span_json({"attributes": [{"key": "k", "value": {"intValue": 1.5}}]}),
        span_json({"kind": "SPAN_KIND_SIDEWAYS"}),
        span_json({"events": [7]}),
        span_json({"name": "\ud800 a lone surrogate: JSON, not text"}),
        span_json({"attributes": [{"key": "k", "value": {"doubleValue": 10**400}}]}),
        span_json({"attributes": [{"key": "k", "value": {"intValue": "1e30"}}]}),
        span_json({"flags": 2**32}),
    ]
    for bad in not_json:
        with pytest.raises(OtlpDecodeError) as raised:
            otlp.parse_json(bad)
        assert "sk-live" not in str(raised.value) and len(str(raised.value)) < 120, bad[:80]


def test_empty_requests_are_requests() -> None:
    for request in (otlp.parse_protobuf(b""), otlp.parse_json(b"{}"), otlp.parse_json(b'{"resourceSpans": []}')):
        assert otlp.decode_spans(request) == DecodedSpans([], 0, "")


def mutations(body: bytes, rng: random.Random, count: int) -> Iterator[bytes]:
    for _ in range(count):
        data = bytearray(body)
        for _ in range(rng.randint(1, 8)):
            choice = rng.random()
            position = rng.randrange(len(data)) if data else 0
            if choice < 0.5 and data:
                data[position] = rng.getrandbits(8)
            elif choice < 0.7 and data:
                del data[position : position + rng.randint(1, 16)]
            elif choice < 0.9:
                data[position:position] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 8)))
            else:
                data = data[: position or 1]
        yield bytes(data)


def test_mutated_bodies_decode_or_raise_otlp_decode_error_and_nothing_else() -> None:
    """A bounded fuzz loop: every mutation of a real request is either a request (its spans decoded, bad ones
    counted, and mappable) or OtlpDecodeError."""
    spans = every_field_spans()
    request = encode_spans(spans)
    rng = random.Random(2121)
    outcomes = {"decoded": 0, "refused": 0}
    for parse, body in (
        (otlp.parse_protobuf, request.SerializeToString()),
        (otlp.parse_json, otlp_json(request)),
        (otlp.parse_json, gzip.decompress(gzip.compress(otlp_json(request, ints_as_numbers=True)))),
    ):
        for mutated in mutations(body, rng, 400):
            try:
                result = otlp.decode_spans(parse(mutated))
            except OtlpDecodeError:
                outcomes["refused"] += 1
                continue
            outcomes["decoded"] += 1
            assert result.rejected >= 0 and (result.message == "") == (result.rejected == 0)
            for span in result.spans:
                map_span(span)  # never raises for content
    assert outcomes["decoded"] and outcomes["refused"]


JUNK: list[Any] = [
    None,
    True,
    0,
    -1,
    2**64,
    10**400,
    1.5,
    float("inf"),
    "",
    "zz",
    "\ud800",
    "0af7651916cd43dd8448eb211c80319c",
    [],
    {},
    [1, "a"],
    {"stringValue": "x"},
    {"arrayValue": {"values": [{}, {"kvlistValue": {"values": [{"key": 1}]}}]}},
]


def slots(node: Any) -> Iterator[tuple[Any, Any]]:
    """Every (container, key or index) of a JSON document, depth first."""
    if isinstance(node, dict):
        for key in node:
            yield node, key
            yield from slots(node[key])
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield node, index
            yield from slots(item)


def test_mutated_json_documents_decode_or_raise_otlp_decode_error_and_nothing_else() -> None:
    """A bounded fuzz loop over the JSON walk: values of the wrong type, size or text anywhere in a real request."""
    document = json.loads(otlp_json(encode_spans(every_field_spans())))
    rng = random.Random(4317)
    outcomes = {"decoded": 0, "refused": 0}
    for _ in range(600):
        mutated = json.loads(json.dumps(document))
        places = list(slots(mutated))
        for container, key in rng.sample(places, rng.randint(1, 4)):
            container[key] = json.loads(json.dumps(rng.choice(JUNK)))
        try:
            request = otlp.parse_json(json.dumps(mutated).encode())
        except OtlpDecodeError:
            outcomes["refused"] += 1
            continue
        outcomes["decoded"] += 1
        result = otlp.decode_spans(request)
        for span in result.spans:
            map_span(span)
        # The gateway logs a request as protobuf and decodes it again on replay: the same spans, the same refusals
        replayed = otlp.decode_spans(otlp.parse_protobuf(request.SerializeToString()))
        assert (replayed.rejected, replayed.message) == (result.rejected, result.message)
        assert [span_fields(span) for span in replayed.spans] == [span_fields(span) for span in result.spans]
    assert outcomes["decoded"] and outcomes["refused"]


# --------------------------------------------------------------------------- answers


def test_export_response_sets_partial_success_only_when_there_is_something_to_say() -> None:
    assert otlp.export_response(0, "") == ExportTraceServiceResponse()
    assert otlp.response_body(otlp.export_response(0, ""), json=False) == b""
    assert otlp.response_body(otlp.export_response(0, ""), json=True) == b"{}"

    response = otlp.export_response(2, "2 spans rejected: invalid span id")
    assert response.HasField("partial_success")
    parsed = ExportTraceServiceResponse.FromString(otlp.response_body(response, json=False))
    assert (parsed.partial_success.rejected_spans, parsed.partial_success.error_message) == (
        2,
        "2 spans rejected: invalid span id",
    )
    assert json.loads(otlp.response_body(response, json=True)) == {
        "partialSuccess": {"rejectedSpans": "2", "errorMessage": "2 spans rejected: invalid span id"}
    }
    warning = otlp.export_response(0, "a warning")
    assert warning.partial_success.error_message == "a warning"


@pytest.mark.parametrize(("code", "message"), [(3, "bad body"), (16, "no token"), (0, ""), (8, "é" * 300), (-1, "x")])
def test_status_body_is_a_google_rpc_status(code: int, message: str) -> None:
    assert status_pb2.Status.FromString(otlp.status_body(code, message, json=False)) == status_pb2.Status(
        code=code, message=message
    )
    assert (
        otlp.status_body(code, message, json=False) == status_pb2.Status(code=code, message=message).SerializeToString()
    )
    assert json.loads(otlp.status_body(code, message, json=True)) == {"code": code, "message": message}
