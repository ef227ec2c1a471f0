import json
import math

import pytest
from opentelemetry.trace import Status, StatusCode

from prefactor_otel.mapping import (
    agent_schema_version,
    agent_version_from_resource,
    classify,
    iso_from_ns,
    json_safe,
    map_span,
    schema_names,
)
from tests.spans import agent_trace, make_provider


def _by_name(spans):
    return {s.name: s for s in spans}


def test_envelope_and_ids_are_the_otel_ids():
    provider, collector = make_provider()
    agent_trace(provider)
    spans = _by_name(collector.spans)
    chat = spans["chat gpt-4o"]
    record = map_span(chat)
    p = record.payload
    assert p["span_id"] == f"{chat.context.span_id:016x}"
    assert p["trace_id"] == f"{chat.context.trace_id:032x}"
    assert p["parent_span_id"] == f"{spans['invoke_agent support'].context.span_id:016x}"
    assert set(p) >= {"name", "kind", "status", "inputs", "metadata", "token_usage", "error", "events", "links"}
    assert record.schema_name == "otel:llm"
    assert p["model"] == "gpt-4o"  # typed fields sit at the payload's top level
    # JSON-in-string parsed and normalised to the shared message shape
    assert p["inputs"]["messages"] == [{"role": "user", "content": "hi"}]
    assert p["token_usage"] == {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
    # consumed attributes do not appear again in metadata
    assert "gen_ai.request.model" not in p["metadata"]
    assert p["metadata"]["otel.scope.name"] == "tests.agent"
    assert p["metadata"]["resource.service.name"] == "test-agent"
    assert record.result_payload["token_usage"] == p["token_usage"]
    assert record.status == "complete"


def test_classification_split():
    assert classify({"gen_ai.operation.name": "chat"}).schema_name == "otel:llm"
    assert classify({"gen_ai.operation.name": "execute_tool"}).schema_name == "otel:tool"
    assert classify({"gen_ai.operation.name": "invoke_agent"}).schema_name == "otel:agent"
    assert classify({"gen_ai.tool.name": "x"}).schema_name == "otel:tool"
    assert classify({"http.method": "GET"}).schema_name == "otel:span"
    assert classify({"gen_ai.operation.name": "something_new"}).schema_name == "otel:span"


def test_every_emitted_schema_is_registered():
    registered = {s.name for s in agent_schema_version().span_type_schemas or []}
    assert registered == schema_names()
    for attrs in ({"gen_ai.operation.name": op} for op in ("chat", "execute_tool", "invoke_agent", "x")):
        assert classify(attrs).schema_name in registered
    for schema in agent_schema_version().span_type_schemas or []:
        assert schema.title and schema.template and schema.params_schema["type"] == "object"


def test_error_status_and_exception_event():
    provider, collector = make_provider()
    with pytest.raises(RuntimeError):
        agent_trace(provider, fail=True)
    spans = _by_name(collector.spans)
    record = map_span(spans["db query"])
    assert record.status == "failed"
    assert record.payload["error"]["error_type"] == "RuntimeError"
    assert record.payload["error"]["message"] == "tool broke"
    assert "Traceback" in record.payload["error"]["stacktrace"]
    assert record.result_payload["error"] == record.payload["error"]
    assert record.payload["events"][0]["name"] == "exception"


def test_error_status_without_exception_uses_description():
    provider, collector = make_provider()
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("s") as span:
        span.set_status(Status(StatusCode.ERROR, "upstream said no"))
    record = map_span(collector.spans[0])
    assert record.status == "failed"
    assert record.payload["error"] == {"error_type": "error", "message": "upstream said no", "stacktrace": None}


def test_every_attribute_type_encodes_to_strict_json():
    provider, collector = make_provider()
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("s") as span:
        span.set_attribute("str", "é✓ 漢字")
        span.set_attribute("bool", True)
        span.set_attribute("int", 2**62)
        span.set_attribute("nan", math.nan)
        span.set_attribute("inf", math.inf)
        span.set_attribute("ninf", -math.inf)
        span.set_attribute("seq_str", ["a", "b"])
        span.set_attribute("seq_float", [1.5, math.nan])
        span.set_attribute("seq_bool", [True, False])
        span.add_event("evt", {"n": math.inf})
    record = map_span(collector.spans[0])
    text = json.dumps(record.payload, allow_nan=False)  # raises on NaN/inf
    md = json.loads(text)["metadata"]
    assert md["nan"] == "NaN" and md["inf"] == "Infinity" and md["ninf"] == "-Infinity"
    assert md["seq_float"] == [1.5, "NaN"]
    assert md["int"] == 2**62 and md["str"] == "é✓ 漢字" and md["seq_bool"] == [True, False]


def test_json_safe_odd_values():
    assert json_safe(b"\xff") == "\ufffd"
    assert json_safe(object()).startswith("<object")
    assert json_safe({"a": (1, 2)}) == {"a": [1, 2]}


def test_iso_from_ns_millisecond_z():
    assert iso_from_ns(1_700_000_000_123_999_999) == "2023-11-14T22:13:20.123Z"
    assert iso_from_ns(0) == "1970-01-01T00:00:00.000Z"


def test_resource_to_agent_version_with_overrides():
    attrs = {"service.name": "svc", "service.version": "2.0"}
    v = agent_version_from_resource(attrs, sdk_version="0.1.0", agent_sdk=["b@1", "a@2", "a@2"])
    assert v.name == "svc" and v.external_identifier == "2.0"
    assert v.runtime_environment.prefactor_sdk == ["prefactor-otel@0.1.0"]
    assert v.runtime_environment.agent_sdk == ["a@2", "b@1"]
    assert v.runtime_environment.runtime.startswith("cpython@3.")
    v2 = agent_version_from_resource(attrs, sdk_version="0.1.0", agent_name="n", agent_identifier="i")
    assert (v2.name, v2.external_identifier) == ("n", "i")
    v3 = agent_version_from_resource({}, sdk_version="0.1.0")
    assert v3.name == "unknown_service" and v3.external_identifier == "unversioned"


def test_links_are_mapped():
    provider, collector = make_provider()
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("a") as a:
        ctx = a.get_span_context()
    from opentelemetry.trace import Link

    with tracer.start_as_current_span("b", links=[Link(ctx, {"why": "follows"})]):
        pass
    record = map_span(collector.spans[1])
    assert record.payload["links"] == [
        {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}", "attributes": {"why": "follows"}}
    ]


def test_per_resource_and_per_name_set_caches_never_mix_spans_up():
    # resource.* metadata is cached per Resource, flattened families per attribute-name set: spans of two
    # services, with the same attribute names and different values, each keep their own.
    records = []
    for service in ("svc-a", "svc-b", "svc-a"):
        provider, collector = make_provider(service=service)
        with provider.get_tracer("t").start_as_current_span(
            "llm", attributes={"openinference.span.kind": "LLM", "llm.input_messages.0.message.content": service}
        ):
            pass
        records.append(map_span(collector.spans[0]))
    assert [r.payload["metadata"]["resource.service.name"] for r in records] == ["svc-a", "svc-b", "svc-a"]
    assert [r.payload["inputs"]["messages"][0]["content"] for r in records] == ["svc-a", "svc-b", "svc-a"]


def test_events_and_links_are_read_from_an_sdk_without_the_private_fields():
    """map_span asks the SDK's private `_events`/`_links` only whether they are empty (the public properties copy
    under a lock on every read): a span type without those fields must still give its events and links."""
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import Link

    provider, collector = make_provider()
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("linked") as linked:
        pass
    with tracer.start_as_current_span("span", links=[Link(linked.get_span_context())]) as span:
        span.add_event("thought", {"text": "hello"})
    base = collector.spans[-1]

    class OtherSpan(ReadableSpan):
        @property
        def events(self):  # type: ignore[override]
            return self._kept_events

        @property
        def links(self):  # type: ignore[override]
            return self._kept_links

        @property
        def dropped_events(self):  # type: ignore[override]
            return 0

        @property
        def dropped_links(self):  # type: ignore[override]
            return 0

    other = OtherSpan(
        name=base.name,
        context=base.context,
        parent=base.parent,
        resource=base.resource,
        attributes=base.attributes,
        kind=base.kind,
        status=base.status,
        start_time=base.start_time,
        end_time=base.end_time,
        instrumentation_scope=base.instrumentation_scope,
    )
    other._kept_events, other._kept_links = base.events, base.links
    del other._events, other._links
    payload = map_span(other).payload
    assert [e["name"] for e in payload["events"]] == ["thought"]
    assert len(payload["links"]) == 1
