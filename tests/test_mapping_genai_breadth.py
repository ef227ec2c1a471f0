"""Issue 13's mapping rules: token accounting (no invented zeros, detail-only usage, aggregates marked, equal
duplicates consumed, usage-recording spans not model calls), agent and tool names, and agent conversations from
attributes and from events.

The spans are real SDK spans built in the exact shapes the libraries write: Strands Agents' tracer (both its
latest-conventions form and its older per-message events), the OTel GenAI conventions' `create_agent` /
`invoke_agent`, OpenInference's DSPy tool spans. The libraries' own recordings are in test_semconv_*.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import Tracer

from prefactor_otel.mapping import MappingOptions, SpanRecord, map_span
from tests.fixtures.semconv.checks import check_record, export_to_devserver, provider

# What the fake model "handed out" in the Strands-shaped run below: two model calls.
CALLS = ({"input": 20, "output": 6}, {"input": 31, "output": 9})


def _mapped(spans: list[ReadableSpan]) -> dict[str, list[SpanRecord]]:
    records: dict[str, list[SpanRecord]] = {}
    for span in spans:
        record = map_span(span)
        check_record(record)  # valid for its registered schema, strict JSON, a summary that renders
        records.setdefault(span.name, []).append(record)
    return records


def _one(name: str, attributes: dict[str, Any], events: tuple[tuple[str, dict[str, Any]], ...] = ()) -> SpanRecord:
    tracer_provider, collector = provider()
    with tracer_provider.get_tracer("tests.breadth").start_as_current_span(name, attributes=attributes) as span:
        for event_name, event_attributes in events:
            span.add_event(event_name, event_attributes)
    (record,) = _mapped(collector.spans)[name]
    return record


def _blocks(text: str) -> str:
    return json.dumps([{"text": text}])


def _usage(call: dict[str, int]) -> dict[str, int]:
    # Strands writes each count under both the current and the older name, equal.
    return {
        "gen_ai.usage.prompt_tokens": call["input"],
        "gen_ai.usage.input_tokens": call["input"],
        "gen_ai.usage.completion_tokens": call["output"],
        "gen_ai.usage.output_tokens": call["output"],
        "gen_ai.usage.total_tokens": call["input"] + call["output"],
    }


def _strands_run(latest: bool) -> Callable[[TracerProvider], None]:
    """A Strands agent run as its tracer writes it: invoke_agent -> event loop cycle -> chat, execute_tool; the
    agent span gets the run's accumulated usage. `latest`: OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental
    (messages in `gen_ai.client.inference.operation.details` events), else the per-message events."""
    provider_key = "gen_ai.provider.name" if latest else "gen_ai.system"

    def messages_event(span: Any, key: str, messages: list[dict[str, Any]]) -> None:
        span.add_event("gen_ai.client.inference.operation.details", {key: json.dumps(messages)})

    def chat(tracer: Tracer, history: list[tuple[str, str]], answer: str, call: dict[str, int]) -> None:
        with tracer.start_as_current_span(
            "chat",
            attributes={"gen_ai.operation.name": "chat", provider_key: "strands-agents", "gen_ai.request.model": "m1"},
        ) as span:
            if latest:
                parts = [{"role": role, "parts": [{"type": "text", "content": text}]} for role, text in history]
                messages_event(span, "gen_ai.input.messages", parts)
                messages_event(
                    span,
                    "gen_ai.output.messages",
                    [
                        {
                            "role": "assistant",
                            "parts": [{"type": "text", "content": answer}],
                            "finish_reason": "end_turn",
                        }
                    ],
                )
            else:
                for role, text in history:
                    span.add_event(f"gen_ai.{role}.message", {"content": _blocks(text)})
                span.add_event("gen_ai.choice", {"finish_reason": "end_turn", "message": _blocks(answer)})
            span.set_attributes(_usage(call))

    def run(tracer_provider: TracerProvider) -> None:
        tracer = tracer_provider.get_tracer("strands.telemetry.tracer")
        with tracer.start_as_current_span(
            "invoke_agent weather_bot",
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                provider_key: "strands-agents",
                "gen_ai.agent.name": "weather_bot",
                "gen_ai.request.model": "m1",
                "gen_ai.agent.system_prompt": "Answer briefly.",
            },
        ) as agent:
            if latest:
                messages_event(
                    agent,
                    "gen_ai.input.messages",
                    [{"role": "user", "parts": [{"type": "text", "content": "Weather in Oslo?"}]}],
                )
            else:
                agent.add_event("gen_ai.user.message", {"content": _blocks("Weather in Oslo?")})
            with tracer.start_as_current_span("execute_event_loop_cycle", attributes={"event_loop.cycle_id": "c1"}):
                chat(tracer, [("user", "Weather in Oslo?")], "Let me check.", CALLS[0])
                with tracer.start_as_current_span(
                    "execute_tool get_weather",
                    attributes={
                        "gen_ai.operation.name": "execute_tool",
                        provider_key: "strands-agents",
                        "gen_ai.tool.name": "get_weather",
                        "gen_ai.tool.call.id": "tooluse_1",
                    },
                ) as tool:
                    if latest:
                        call = {"type": "tool_call", "name": "get_weather", "id": "tooluse_1"}
                        messages_event(
                            tool,
                            "gen_ai.input.messages",
                            [{"role": "tool", "parts": [{**call, "arguments": {"city": "Oslo"}}]}],
                        )
                        response = {"type": "tool_call_response", "id": "tooluse_1", "response": [{"text": "cold"}]}
                        messages_event(tool, "gen_ai.output.messages", [{"role": "tool", "parts": [response]}])
                    else:
                        event = {"role": "tool", "content": json.dumps({"city": "Oslo"}), "id": "tooluse_1"}
                        tool.add_event("gen_ai.tool.message", event)
                        tool.add_event("gen_ai.choice", {"message": _blocks("cold"), "id": "tooluse_1"})
                    tool.set_attribute("gen_ai.tool.status", "success")
            with tracer.start_as_current_span("execute_event_loop_cycle", attributes={"event_loop.cycle_id": "c2"}):
                chat(tracer, [("user", "Weather in Oslo?"), ("assistant", "Let me check.")], "Cold.", CALLS[1])
            if latest:
                answer = [
                    {"role": "assistant", "parts": [{"type": "text", "content": "Cold."}], "finish_reason": "end_turn"}
                ]
                messages_event(agent, "gen_ai.output.messages", answer)
            else:
                agent.add_event("gen_ai.choice", {"message": "Cold.", "finish_reason": "end_turn"})
            total = {key: sum(call[key] for call in CALLS) for key in ("input", "output")}
            agent.set_attributes({**_usage(total), "gen_ai.usage.cache_read_input_tokens": 0})

    return run


def _trace_tokens(records: list[SpanRecord]) -> dict[str, int]:
    """What a reader summing the trace's usage gets: every span's usage but the aggregated ones."""
    totals = {"prompt_tokens": 0, "completion_tokens": 0}
    for record in records:
        usage = record.payload["token_usage"]
        if usage and not usage.get("aggregated"):
            for key in totals:
                totals[key] += usage.get(key, 0)
    return totals


@pytest.mark.parametrize("latest", [True, False], ids=["details-events", "per-message-events"])
def test_strands_shaped_run_agent_conversation_tool_io_and_token_accounting(latest: bool) -> None:
    tracer_provider, collector = provider()
    _strands_run(latest)(tracer_provider)
    records = _mapped(collector.spans)
    (agent,) = records["invoke_agent weather_bot"]
    first, second = records["chat"]
    (tool,) = records["execute_tool get_weather"]

    # the agent's conversation: the question in (after its system prompt), the answer out, with its finish reason
    assert agent.payload["inputs"]["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Weather in Oslo?"},
    ]
    (answer,) = agent.result_payload["outputs"]["messages"]
    assert answer["role"] == "assistant" and answer["content"] == "Cold."
    assert agent.result_payload["finish_reasons"] == ["end_turn"]
    assert agent.payload["agent_name"] == "weather_bot" and agent.payload["model"] == "m1"

    # model calls: messages from their events too
    assert first.payload["inputs"]["messages"] == [{"role": "user", "content": "Weather in Oslo?"}]
    assert first.result_payload["outputs"]["messages"][0]["content"] == "Let me check."
    assert second.payload["inputs"]["messages"][-1] == {"role": "assistant", "content": "Let me check."}

    # the tool: arguments and result from its events
    assert tool.payload["tool_name"] == "get_weather" and tool.payload["tool_call_id"] == "tooluse_1"
    assert tool.payload["inputs"]["arguments"] == {"city": "Oslo"}
    assert tool.result_payload["outputs"]["result"] == "cold"

    # token accounting: the run's sum is marked aggregated, each call counted once; the equal duplicate names
    # (gen_ai.usage.prompt_tokens beside input_tokens) are consumed, not left in metadata
    assert agent.payload["token_usage"] == {
        "prompt_tokens": 51,
        "completion_tokens": 15,
        "total_tokens": 66,
        "cache_read_tokens": 0,
        "aggregated": True,
    }
    assert first.payload["token_usage"] == {"prompt_tokens": 20, "completion_tokens": 6, "total_tokens": 26}
    all_records = [record for group in records.values() for record in group]
    handed_out = {"prompt_tokens": 51, "completion_tokens": 15}
    assert _trace_tokens(all_records) == handed_out
    for record in (agent, first, second):
        assert not [key for key in record.payload["metadata"] if key.startswith("gen_ai.usage.")]


def test_strands_shaped_run_end_to_end_valid_for_the_server() -> None:
    stored, _ = export_to_devserver(_strands_run(latest=True))  # strict-mode findings fail the test (conftest)
    by_name = {span["payload"]["name"]: span for span in stored}
    agent = by_name["invoke_agent weather_bot"]
    assert agent["schema_name"] == "otel:agent"
    assert agent["payload"]["inputs"]["messages"][-1]["content"] == "Weather in Oslo?"
    assert agent["result_payload"]["outputs"]["messages"][0]["content"] == "Cold."


def test_missing_counts_are_absent_not_zero() -> None:
    embedding = _one(
        "embeddings text-embedding-3-small",
        {"gen_ai.operation.name": "embeddings", "gen_ai.request.model": "e", "gen_ai.usage.input_tokens": 8},
    )
    assert embedding.payload["token_usage"] == {"prompt_tokens": 8}
    only_output = _one("chat m", {"gen_ai.operation.name": "chat", "gen_ai.usage.output_tokens": 4})
    assert only_output.payload["token_usage"] == {"completion_tokens": 4}


def test_usage_with_only_cache_or_reasoning_counts_is_kept() -> None:
    cached = _one("chat m", {"gen_ai.operation.name": "chat", "gen_ai.usage.cache_read.input_tokens": 5})
    assert cached.payload["token_usage"] == {"cache_read_tokens": 5}
    reasoning = _one("chat m", {"gen_ai.operation.name": "chat", "gen_ai.usage.reasoning.output_tokens": 12})
    assert reasoning.payload["token_usage"] == {"reasoning_tokens": 12}


def test_a_differing_duplicate_usage_key_stays_in_metadata() -> None:
    record = _one(
        "chat m",
        {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 9, "gen_ai.usage.prompt_tokens": 7},
    )
    assert record.payload["token_usage"] == {"prompt_tokens": 9}
    assert record.payload["metadata"]["gen_ai.usage.prompt_tokens"] == 7  # not the value used: kept, not lost


def test_usage_recording_span_is_not_a_model_call() -> None:
    tracer_provider, collector = provider()
    tracer = tracer_provider.get_tracer("tests.breadth")
    usage = {"gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 3}
    with tracer.start_as_current_span("agent step"):
        with tracer.start_as_current_span(
            "chat m1", attributes={"gen_ai.operation.name": "chat", "gen_ai.request.model": "m1", **usage}
        ):
            pass
        with tracer.start_as_current_span("record usage", attributes={"gen_ai.response.model": "m1-0601", **usage}):
            pass
    records = _mapped(collector.spans)
    (call,) = records["chat m1"]
    (recorded,) = records["record usage"]
    assert call.schema_name == "otel:llm"
    assert recorded.schema_name == "otel:span"
    assert recorded.payload["metadata"]["prefactor.classified_by"] == "usage record"
    assert recorded.payload["token_usage"]["aggregated"] is True
    assert _trace_tokens([call, recorded]) == {"prompt_tokens": 10, "completion_tokens": 3}
    # a span with a response model and what the call was asked is still a model call
    asked = _one(
        "generate",
        {"gen_ai.response.model": "m1", "gen_ai.input.messages": "[]", "gen_ai.usage.input_tokens": 1},
    )
    assert asked.schema_name == "otel:llm"


def test_invoke_agent_usage_is_aggregated_and_its_conversation_from_attributes() -> None:
    record = _one(
        "invoke_agent planner",
        {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "planner",
            "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "Plan."}]),
            "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [{"type": "text", "content": "Trip?"}]}]),
            "gen_ai.output.messages": json.dumps(
                [{"role": "assistant", "parts": [{"type": "text", "content": "Go."}], "finish_reason": "stop"}]
            ),
            "gen_ai.request.temperature": 0.1,
            "gen_ai.request.max_tokens": 100,
            "gen_ai.response.finish_reasons": ("stop",),
            "gen_ai.response.id": "resp_1",
            "gen_ai.usage.input_tokens": 40,
            "gen_ai.usage.output_tokens": 2,
        },
    )
    payload, result = record.payload, record.result_payload
    assert payload["inputs"]["messages"] == [
        {"role": "system", "content": "Plan."},
        {"role": "user", "content": "Trip?"},
    ]
    assert result["outputs"]["messages"] == [{"role": "assistant", "content": "Go.", "finish_reason": "stop"}]
    assert payload["params"] == {"temperature": 0.1, "max_tokens": 100}
    assert result["finish_reasons"] == ["stop"] and result["response_id"] == "resp_1"
    assert payload["token_usage"] == {
        "prompt_tokens": 40,
        "completion_tokens": 2,
        "total_tokens": 42,
        "aggregated": True,
    }
    metadata = payload["metadata"]
    assert not {"gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.response.id"} & set(metadata)


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({"gen_ai.operation.name": "create_agent"}, None),
        ({"gen_ai.operation.name": "create_agent", "gen_ai.agent.name": "Helper"}, "Helper"),
    ],
)
def test_create_agent_name_only_from_its_attribute(attributes: dict[str, Any], expected: str | None) -> None:
    record = _one("create_agent Helper", attributes)
    assert record.schema_name == "otel:agent"
    assert record.payload.get("agent_name") == expected


@pytest.mark.parametrize(
    ("span_name", "expected"),
    [
        ("weather_agent.run", "weather_agent"),
        ("weather_agent.run_sync", "weather_agent"),
        ("weather_agent.ainvoke", "weather_agent"),
        ("ReAct.forward", "ReAct"),
        ("invoke_agent weather_agent", "weather_agent"),
        ("weather_agent", "weather_agent"),
        (".run", ".run"),  # nothing left without the suffix: the name as it is
    ],
)
def test_agent_name_from_the_span_name_without_its_method(span_name: str, expected: str) -> None:
    record = _one(span_name, {"openinference.span.kind": "AGENT", "input.value": "hi"})
    assert record.payload["agent_name"] == expected


def test_dspy_tool_named_only_by_its_span_name() -> None:
    # OpenInference's DSPy instrumentation: a tool span named `<tool>.__call__`, no tool.name
    record = _one(
        "get_weather.__call__",
        {
            "openinference.span.kind": "TOOL",
            "input.value": json.dumps({"city": "Oslo"}),
            "input.mime_type": "application/json",
            "output.value": "cold",
        },
    )
    assert record.payload["tool_name"] == "get_weather"
    assert record.payload["inputs"]["arguments"] == {"city": "Oslo"}
    assert record.result_payload["outputs"]["result"] == "cold"
    # a span name in none of the known forms is not taken for the tool's name
    assert "tool_name" not in _one("lookup", {"openinference.span.kind": "TOOL"}).payload


def test_pydantic_ai_run_token_accounting() -> None:
    """A real pydantic-ai run (FunctionModel, no network): the agent's usage is the aggregate, the model calls
    are what sum."""
    from pydantic_ai.models.function import FunctionModel

    from tests.test_semconv_pydantic_ai import _run, _scripted

    tracer_provider, collector = provider()
    _run(tracer_provider, FunctionModel(_scripted), 5)
    records = [record for group in _mapped(collector.spans).values() for record in group]
    (agent,) = [r for r in records if r.schema_name == "otel:agent"]
    usage = agent.payload["token_usage"]
    assert usage["aggregated"] is True
    assert _trace_tokens(records) == {
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
    }


def test_messages_from_events_are_limited_like_attributes() -> None:
    # The length limits' fast path looks at the longest raw string: events count, or a long message read from an
    # event would skip the limit.
    tracer_provider, collector = provider()
    long_question = "why? " * 400
    with tracer_provider.get_tracer("tests.breadth").start_as_current_span(
        "invoke_agent a", attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "a"}
    ) as span:
        span.add_event("gen_ai.user.message", {"content": _blocks(long_question)})
    record = map_span(collector.spans[0], MappingOptions(max_input_length=100))
    check_record(record)
    content = record.payload["inputs"]["messages"][0]["content"]
    assert content.startswith("why? ") and len(content.encode()) < 200
    assert record.payload["metadata"]["prefactor.truncated"][0]["path"] == "inputs.messages[0].content"


def test_messages_from_events_are_redacted() -> None:
    from tests.fixtures.semconv.fake_openai import SECRET_IN_PROMPT

    record = _one(
        "invoke_agent a",
        {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "a"},
        events=(("gen_ai.user.message", {"content": _blocks(f"my key is {SECRET_IN_PROMPT}")}),),
    )
    (message,) = record.payload["inputs"]["messages"]
    assert message["content"].startswith("my key is [REDACTED")
    assert SECRET_IN_PROMPT not in json.dumps(record.payload)


def test_google_adk_call_llm_request_and_response() -> None:
    # ADK's trace_call_llm: no operation name, gen_ai.system, the LlmRequest / LlmResponse as JSON
    request = {
        "model": "gemini-2.5-flash",
        "config": {"system_instruction": "You answer about weather.", "max_output_tokens": 64},
        "contents": [
            {"role": "user", "parts": [{"text": "Weather in Oslo?"}]},
            {
                "role": "model",
                "parts": [{"function_call": {"id": "fc_1", "name": "get_weather", "args": {"city": "Oslo"}}}],
            },
            {
                "role": "user",
                "parts": [{"function_response": {"id": "fc_1", "name": "get_weather", "response": {"result": "cold"}}}],
            },
        ],
    }
    response = {"content": {"role": "model", "parts": [{"text": "Cold in Oslo."}]}, "finish_reason": "STOP"}
    record = _one(
        "call_llm",
        {
            "gen_ai.system": "gcp.vertex.agent",
            "gen_ai.request.model": "gemini-2.5-flash",
            "gcp.vertex.agent.invocation_id": "e-1",
            "gcp.vertex.agent.session_id": "s-1",
            "gcp.vertex.agent.llm_request": json.dumps(request),
            "gcp.vertex.agent.llm_response": json.dumps(response),
            "gen_ai.request.max_tokens": 64,
            "gen_ai.usage.input_tokens": 30,
            "gen_ai.usage.output_tokens": 5,
            "gen_ai.response.finish_reasons": ("stop",),
        },
    )
    assert record.schema_name == "otel:llm"
    assert record.payload["inputs"]["messages"] == [
        {"role": "system", "content": "You answer about weather."},
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "fc_1", "name": "get_weather", "arguments": {"city": "Oslo"}}],
        },
        {"role": "tool", "content": '{"result":"cold"}', "tool_call_id": "fc_1", "name": "get_weather"},
    ]
    assert record.result_payload["outputs"]["messages"] == [
        {"role": "assistant", "content": "Cold in Oslo.", "finish_reason": "stop"}
    ]
    assert record.payload["session_id"] == "s-1"
    metadata = record.payload["metadata"]
    assert not {"gcp.vertex.agent.llm_request", "gcp.vertex.agent.llm_response"} & set(metadata)
