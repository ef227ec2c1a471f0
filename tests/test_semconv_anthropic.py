"""Anthropic's SDK live against the fake Anthropic Messages server on 127.0.0.1, three ways: the SDK's own spans
(its `open_telemetry` client option), OpenInference's instrumentation and Traceloop's. The workload
(tests/fixtures/semconv/anthropic_app.py): a tool loop by hand, a streamed answer, and the SDK's tool runner."""

from __future__ import annotations

from typing import Any

import anthropic  # noqa: F401  (the test extra installs it; missing = fail, not skip)
from openinference.instrumentation.anthropic import AnthropicInstrumentor as OpenInferenceAnthropic
from opentelemetry.instrumentation.anthropic import AnthropicInstrumentor as TraceloopAnthropic
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

from prefactor_otel.mapping import SpanRecord
from tests.fixtures.semconv.anthropic_app import API_KEY, MODEL, run_anthropic_app
from tests.fixtures.semconv.checks import export_to_devserver, map_all, provider
from tests.fixtures.semconv.fake_anthropic import TOOL_USE_ID, FakeAnthropic
from tests.fixtures.semconv.fake_openai import TokenLedger

ASKED_FOR_TOOL = {
    "role": "assistant",
    "content": "Let me check the weather.",
    "tool_calls": [{"id": TOOL_USE_ID, "name": "get_weather", "arguments": {"city": "Paris"}}],
}


def run_own_spans(tracer_provider: TracerProvider) -> TokenLedger:
    """The SDK's own spans, with content (its default is metadata only)."""
    options = {"open_telemetry": {"tracer_provider": tracer_provider, "traces": {"content_mode": "content"}}}
    with FakeAnthropic() as fake:
        run_anthropic_app(fake, options)
    return fake.served


def run_instrumented(instrumentor: Any, tracer_provider: TracerProvider) -> TokenLedger:
    """An instrumentation's spans only: the SDK's own are switched off, as a user of an instrumentation does."""
    instrumentor.instrument(tracer_provider=tracer_provider)
    try:
        with FakeAnthropic() as fake:
            run_anthropic_app(fake, {"open_telemetry": False})
    finally:
        instrumentor.uninstrument()
    return fake.served


def run_openinference(tracer_provider: TracerProvider) -> TokenLedger:
    return run_instrumented(OpenInferenceAnthropic(), tracer_provider)


def run_traceloop(tracer_provider: TracerProvider) -> TokenLedger:
    return run_instrumented(TraceloopAnthropic(), tracer_provider)


def _recorded(run: Any) -> tuple[dict[str, list[SpanRecord]], list[ReadableSpan]]:
    tracer_provider, collector = provider()
    run(tracer_provider)
    return map_all(collector.spans), collector.spans


def test_anthropic_own_spans() -> None:
    records, _ = _recorded(run_own_spans)
    first, second, streamed, runner_ask, runner_answer = records["anthropic.messages.create"]
    (runner,) = records["anthropic.messages.tool_runner"]
    (tool,) = records["anthropic.custom_tool_use get_weather"]
    assert {r.schema_name for r in records["anthropic.messages.create"]} == {"otel:llm"}
    assert (runner.schema_name, tool.schema_name) == ("otel:agent", "otel:tool")

    # model calls: model, provider, system prompt and question in, the tool call out, usage
    assert first.payload["model"] == MODEL and first.payload["provider"] == "anthropic"
    assert first.payload["params"] == {"max_tokens": 200}
    assert first.payload["inputs"]["messages"] == [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    assert first.result_payload["outputs"]["messages"] == [ASKED_FOR_TOOL]
    assert first.result_payload["response_model"] == MODEL
    assert first.payload["token_usage"] == {"prompt_tokens": 23, "completion_tokens": 13, "total_tokens": 36}
    assert second.payload["inputs"]["messages"][2] == ASKED_FOR_TOOL
    assert second.result_payload["outputs"]["messages"] == [{"role": "assistant", "content": "echo: Weather in Paris?"}]
    assert streamed.payload["params"] == {"max_tokens": 100}
    assert streamed.result_payload["outputs"]["messages"] == [{"role": "assistant", "content": "echo: stream please"}]
    assert streamed.payload["token_usage"]["completion_tokens"] == 9

    # the tool runner: one agent loop holding its model calls and the tool it ran
    for child in (runner_ask, runner_answer, tool):
        assert child.parent_span_id == runner.span_id
    assert runner.payload["model"] == MODEL
    assert runner_ask.result_payload["outputs"]["messages"] == [ASKED_FOR_TOOL]
    assert tool.payload["tool_name"] == "get_weather"
    assert tool.payload["tool_call_id"] == TOOL_USE_ID
    assert tool.payload["inputs"]["arguments"] == {"city": "Paris"}
    # (its result, from anthropic.tool_result.content: tests/test_semconv_gaps_13.py)
    assert API_KEY not in str([r.payload for recs in records.values() for r in recs])


def test_anthropic_openinference() -> None:
    records, _ = _recorded(run_openinference)
    first, second = records["messages.create"]
    (streamed,) = records["messages.stream"]
    runner_ask, runner_answer = records["beta.messages.create"]
    every = [first, second, streamed, runner_ask, runner_answer]
    assert {r.schema_name for r in every} == {"otel:llm"}

    assert first.payload["model"] == MODEL and first.payload["provider"] == "anthropic"
    assert first.payload["inputs"]["messages"] == [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    (asked,) = first.result_payload["outputs"]["messages"]
    assert {key: asked[key] for key in ASKED_FOR_TOOL} == ASKED_FOR_TOOL
    assert first.result_payload["finish_reasons"] == ["tool_use"]
    # (Anthropic's input_schema as the definition's parameters: tests/test_semconv_gaps_13.py)
    assert first.payload["tool_definitions"][0]["name"] == "get_weather"
    assert first.payload["token_usage"] == {"prompt_tokens": 23, "completion_tokens": 13, "total_tokens": 36}
    # the tool result sent back is a tool message linked by the call id
    assert second.payload["inputs"]["messages"][-1] == {
        "role": "tool",
        "content": "sunny in Paris",
        "tool_call_id": TOOL_USE_ID,
    }
    assert runner_answer.payload["inputs"]["messages"] == [second.payload["inputs"]["messages"][-1]]
    assert streamed.payload["params"]["stream"] is True
    assert streamed.result_payload["outputs"]["messages"] == [{"role": "assistant", "content": "echo: stream please"}]
    assert streamed.payload["token_usage"] == {"prompt_tokens": 23, "completion_tokens": 9, "total_tokens": 32}


def test_anthropic_traceloop() -> None:
    records, _ = _recorded(run_traceloop)
    first, second, streamed, runner_ask, runner_answer = records["anthropic.chat"]
    assert {r.schema_name for r in records["anthropic.chat"]} == {"otel:llm"}
    assert first.payload["model"] == MODEL and first.payload["provider"] == "anthropic"
    assert first.payload["inputs"]["messages"] == [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    assert first.result_payload["outputs"]["messages"] == [{**ASKED_FOR_TOOL, "finish_reason": "tool_call"}]
    assert first.payload["tool_definitions"][0]["description"] == "Current weather for a city"
    assert first.payload["token_usage"] == {
        "prompt_tokens": 23,
        "completion_tokens": 13,
        "total_tokens": 36,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
    }
    assert second.payload["inputs"]["messages"][2] == ASKED_FOR_TOOL
    assert second.result_payload["outputs"]["messages"][0]["content"] == "echo: Weather in Paris?"
    assert streamed.result_payload["outputs"]["messages"][0]["content"] == "echo: stream please"
    assert runner_ask.result_payload["outputs"]["messages"][0]["tool_calls"] == ASKED_FOR_TOOL["tool_calls"]
    assert runner_answer.payload["inputs"]["messages"][0]["tool_call_id"] == TOOL_USE_ID


def test_anthropic_own_spans_end_to_end_through_the_exporter() -> None:
    stored, _ = export_to_devserver(run_own_spans)
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in stored:
        by_name.setdefault(span["payload"]["name"], []).append(span)
    (runner,) = by_name["anthropic.messages.tool_runner"]
    (tool,) = by_name["anthropic.custom_tool_use get_weather"]
    assert runner["schema_name"] == "otel:agent" and tool["schema_name"] == "otel:tool"
    assert tool["parent_span_id"] == runner["id"]
    assert {s["schema_name"] for s in by_name["anthropic.messages.create"]} == {"otel:llm"}
    assert tool["payload"]["inputs"]["arguments"] == {"city": "Paris"}
