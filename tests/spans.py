"""Real OTel SDK spans for tests: an in-memory exporter collects what a TracerProvider produced."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult


class Collector(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def make_provider(service: str = "test-agent", version: str = "1.2.3") -> tuple[TracerProvider, Collector]:
    collector = Collector()
    provider = TracerProvider(resource=Resource.create({"service.name": service, "service.version": version}))
    provider.add_span_processor(SimpleSpanProcessor(collector))
    return provider, collector


def agent_trace(provider: TracerProvider, *, fail: bool = False) -> None:
    """invoke_agent -> chat, execute_tool (-> nested plain span)."""
    tracer = provider.get_tracer("tests.agent", "0.1")
    with tracer.start_as_current_span(
        "invoke_agent support",
        attributes={
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "support",
        },
    ):
        with tracer.start_as_current_span(
            "chat gpt-4o",
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.usage.input_tokens": 12,
                "gen_ai.usage.output_tokens": 5,
                "gen_ai.input.messages": '[{"role":"user","parts":[{"type":"text","content":"hi"}]}]',
            },
        ):
            pass
        with (
            tracer.start_as_current_span(
                "execute_tool lookup",
                attributes={
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": "lookup",
                },
            ),
            tracer.start_as_current_span("db query"),
        ):
            if fail:
                raise RuntimeError("tool broke")


def exporter_for(server, **overrides):  # type: ignore[no-untyped-def]
    """A PrefactorSpanExporter pointed at a local DevServer: no environment, runs finished at once."""
    from prefactor_otel import PrefactorSpanExporter

    return PrefactorSpanExporter(**{**server_options(server), "finish_grace_seconds": 0, **overrides})


def server_options(server) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The options pointing an exporter at a local DevServer, with no environment read."""
    return {
        "api_url": server.url,
        "api_token": server.token,
        "agent_id": server.agent_id,
        "environment_id": server.environment_id,
        "environ": {},
    }


def processor_for(server, **overrides):  # type: ignore[no-untyped-def]
    """A PrefactorSpanProcessor pointed at a local DevServer: no environment, every other setting its default."""
    from prefactor_otel import PrefactorSpanProcessor

    return PrefactorSpanProcessor(**{**server_options(server), **overrides})


def wait_for(condition: Callable[[], Any], limit_s: float = 10.0) -> Any:
    """Poll until `condition()` is truthy and return its value (or the last falsy one after `limit_s`): a safety
    limit against a hang, never a timing assertion."""
    stop = time.monotonic() + limit_s
    while True:
        value = condition()
        if value or time.monotonic() > stop:
            return value
        time.sleep(0.02)


def planner_for_tests(partition: int, **options: Any) -> Any:
    """A Planner with the test defaults (agent key "agent", no agent/environment id, no purpose, the agent version
    built from the Resource, the schema set, runs finished as soon as their root is in); `options` override them."""
    from prefactor_otel.mapping import agent_schema_version, agent_version_from_resource
    from prefactor_otel.pipeline.planner import Planner

    def agent_version_for(resource: Any) -> dict[str, Any]:
        return agent_version_from_resource(resource, sdk_version="0").model_dump(exclude_none=True)

    defaults: dict[str, Any] = {
        "agent_key": "agent",
        "agent_id": None,
        "environment_id": None,
        "purpose": None,
        "agent_version_for": agent_version_for,
        "schema_version": agent_schema_version(),
        "finish_grace_seconds": 0.0,
    }
    return Planner(partition=partition, **{**defaults, **options})
