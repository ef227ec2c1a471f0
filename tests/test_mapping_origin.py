"""The origin of a span (its instrumentation scope and Resource in `metadata`, mapping/payload.py `_origin`): the
last origin answered is tried first, before the keyed cache. Spans of different tracers, Resources and redaction
options, interleaved, each get their own; so after the keyed cache is cleared. Real spans from the real SDK."""

from __future__ import annotations

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from prefactor_otel.mapping import MappingOptions, map_span, payload


class _Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: object) -> SpanExportResult:
        self.spans.extend(spans)  # type: ignore[arg-type]
        return SpanExportResult.SUCCESS


def _span(service: str, scope: str, secret: str = "") -> ReadableSpan:
    keep = _Keep()
    provider = TracerProvider(resource=Resource.create({"service.name": service + secret}))
    provider.add_span_processor(SimpleSpanProcessor(keep))
    provider.get_tracer(scope, "1.0").start_span("work").end()
    return keep.spans[0]


def test_interleaved_origins_each_get_their_own() -> None:
    spans = [
        _span("orders", "a"),
        _span("orders", "b"),
        _span("billing", "a"),
        _span("ids", "c", " sk-abcdefghijklmnopqrstuvwx"),
    ]
    plain, masked = MappingOptions(), MappingOptions(redact_patterns=("orders",))
    expected = {}
    for index, span in enumerate(spans):
        for name, options in (("plain", plain), ("masked", masked)):
            meta = map_span(span, options).payload["metadata"]  # type: ignore[index]
            expected[index, name] = (
                meta["otel.scope.name"],
                meta["resource.service.name"],
                meta.get("prefactor.redactions"),
            )
    assert expected[0, "plain"][:2] == ("a", "orders") and expected[2, "plain"][:2] == ("a", "billing")
    assert expected[0, "masked"][1] == "[REDACTED:user_pattern_1]"
    assert expected[3, "plain"][1] == "ids [REDACTED:api_key]" and expected[3, "plain"][2]
    for round_ in range(3):
        for index in [3, 0, 0, 2, 1, 3, 2, 0]:
            for name, options in (("masked", masked), ("plain", plain)):
                meta = map_span(spans[index], options).payload["metadata"]  # type: ignore[index]
                got = (meta["otel.scope.name"], meta["resource.service.name"], meta.get("prefactor.redactions"))
                assert got == expected[index, name], (round_, index, name)
        payload._ORIGINS.clear()  # the keyed cache starts over; the last-answered slot still names its own key
