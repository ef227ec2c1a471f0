"""The mapping's per-process caches fail safe: bounded, and never a stale answer for a changed input.

Each cache the hot path relies on (mapping/README.md, "What is cached"): the Redactor's text cache (names and short
attribute values -> the value rules' outcome), the attribute-name -> convention cache of the classifier, and the
origin cache (instrumentation scope + Resource -> metadata). Real SDK spans, mapped by the real map_span.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

from prefactor_otel.mapping import MappingOptions, conventions, map_span, payload, redaction
from tests.spans import Collector, make_provider


def _span(
    provider: TracerProvider, collector: Collector, attributes: dict[str, Any], name: str = "GET /x"
) -> ReadableSpan:
    with provider.get_tracer("tests.caches", "1.0").start_as_current_span(name, attributes=attributes):
        pass
    return collector.spans[-1]


def _provider(resource: Resource) -> tuple[TracerProvider, Collector]:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    collector = Collector()
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(collector))
    return provider, collector


def test_a_short_value_is_redacted_on_every_span_and_key_whoever_cached_it() -> None:
    provider, collector = make_provider()
    options = MappingOptions()
    secret = "Bearer abcdefghijklmnop"
    for key in ("http.note", "app.header", "http.note"):  # the second and third read the cached outcome
        record = map_span(_span(provider, collector, {key: secret, "db.system.name": "postgresql"}), options)
        metadata = record.payload["metadata"]
        assert metadata[key] == "[REDACTED:bearer_token]"
        assert metadata["db.system.name"] == "postgresql"
        assert metadata["prefactor.redactions"] == [
            {"path": f'attributes["{key}"]', "rule": "bearer_token", "count": 1}
        ]
    # A value that differs by one character is its own entry: a benign value cached first changes nothing.
    record = map_span(_span(provider, collector, {"http.note": "Bearer abcdefghijklmno"}), options)
    assert record.payload["metadata"]["http.note"] == "[REDACTED:bearer_token]"
    record = map_span(_span(provider, collector, {"http.note": "Bearer"}), options)
    assert record.payload["metadata"]["http.note"] == "Bearer"


def test_the_text_cache_is_bounded_and_still_right_after_it_is_cleared() -> None:
    provider, collector = make_provider()
    options = MappingOptions()
    cache = options.redactor._text_cache
    limit = redaction._TEXT_CACHE_LIMIT
    span = _span(provider, collector, {"url.path": "/orders/1", "user.password_hint": "password=hunter22"})
    for number in range(limit + 50):  # unique values (ids in paths): the cache must not grow past its limit
        options.redactor.redact_owned({"url.path": f"/orders/{number}"}, "attributes", [])
        assert len(cache) <= limit
    record = map_span(span, options)
    assert record.payload["metadata"]["user.password_hint"] == "password=[REDACTED:password]"
    assert len(cache) <= limit


def test_a_callback_sees_every_string_on_every_span() -> None:
    seen: list[str] = []

    def callback(path: str, value: str) -> str:
        seen.append(path)
        return value.upper() if path == "otel.scope.name" else value

    provider, collector = make_provider()
    options = MappingOptions(redact_callback=callback)
    spans = [_span(provider, collector, {"db.system.name": "postgresql"}) for _ in range(3)]
    for span in spans:
        record = map_span(span, options)
        assert record.payload["metadata"]["otel.scope.name"] == "TESTS.CACHES"
    # Every span: its name, its attribute, its scope name and version (the Resource is read once per process).
    for path in ("name", 'attributes["db.system.name"]', "otel.scope.name", "otel.scope.version"):
        assert seen.count(path) == 3, (path, seen)


def test_each_resource_and_scope_gets_its_own_metadata() -> None:
    first = _provider(Resource.create({"service.name": "alpha", "host.name": "h1"}))
    second = _provider(Resource.create({"service.name": "beta", "host.name": "token=sk-abcdefghijklmnopqrstuvwx"}))
    options = MappingOptions()
    for _ in range(2):  # the second round reads the cache
        a = map_span(_span(*first, {"k": 1}), options).payload["metadata"]
        b = map_span(_span(*second, {"k": 1}), options).payload["metadata"]
        assert a["resource.service.name"] == "alpha" and a["resource.host.name"] == "h1"
        assert "prefactor.redactions" not in a
        assert b["resource.service.name"] == "beta"
        assert b["resource.host.name"] == "token=[REDACTED:api_key]"
        assert b["prefactor.redactions"] == [{"path": 'resource["host.name"]', "rule": "api_key", "count": 1}]
    provider, collector = first
    with provider.get_tracer("other.scope").start_as_current_span("x"):
        pass
    other = map_span(collector.spans[-1], options)
    assert other.scope == "other.scope" and "otel.scope.version" not in other.payload["metadata"]


def test_the_origin_cache_is_bounded() -> None:
    options = MappingOptions()
    for number in range(payload._ORIGIN_CACHE_SIZE + 10):  # a process that makes a provider per request
        provider, collector = _provider(Resource.create({"service.name": f"svc-{number}"}))
        record = map_span(_span(provider, collector, {"k": 1}), options)
        assert record.payload["metadata"]["resource.service.name"] == f"svc-{number}"
        assert len(payload._ORIGINS) <= payload._ORIGIN_CACHE_SIZE


def test_the_attribute_convention_cache_is_bounded_and_exact() -> None:
    limit = conventions._KEY_CONVENTIONS_LIMIT
    for number in range(limit + 10):
        assert conventions.genai_attribute_convention({f"app.field_{number}": 1}) is None
        assert len(conventions._KEY_CONVENTIONS) <= limit
    assert conventions.genai_attribute_convention({"app.x": 1, "llm.model_name": "m"}) == conventions.OPENINFERENCE
    assert conventions.genai_attribute_convention({"gen_ai.system": "openai"}) == conventions.GEN_AI
    # A name that merely starts like a convention's prefix is not one.
    assert conventions.genai_attribute_convention({"gen_aix": 1, "llmx.y": 2}) is None


def test_formatted_seconds_are_exact_and_the_cache_bounded() -> None:
    from datetime import datetime, timezone

    from prefactor_otel.mapping import values

    start = 1_767_225_599_999_999_999  # 2025-12-31T23:59:59.999999999Z: truncated to the millisecond, never rounded up
    assert values.iso_from_ns(start) == "2025-12-31T23:59:59.999Z"
    assert values.iso_from_ns(start + 1) == "2026-01-01T00:00:00.000Z"
    for second in range(values._SECONDS_KEPT * 2):  # spans of many seconds, e.g. a long-running service
        ns = (1_700_000_000 + second) * 1_000_000_000 + 123_456_789
        expected = datetime.fromtimestamp(ns // 1_000_000_000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        assert values.iso_from_ns(ns) == f"{expected}.123Z"
        assert len(values._SECONDS) <= values._SECONDS_KEPT
    # Alternating seconds (a span's start and end) are both still right after the cache was cleared.
    assert values.iso_from_ns(start) == "2025-12-31T23:59:59.999Z"
    assert values.iso_from_ns(None) is None
