"""The gaps issue 13 found on the recorded agent frameworks, closed: each test names its fixture, span and field,
and says what the mapping gave before. Recorded or live spans of the real libraries, every payload validated
against its schema (checks.map_all)."""

from __future__ import annotations

import json
from typing import Any

from prefactor_otel.mapping import SpanRecord
from tests.fixtures.semconv.checks import map_all, provider
from tests.fixtures.semconv.fake_anthropic import TOOL_USE_ID
from tests.fixtures.semconv.fake_openai import TOOL_MODEL
from tests.fixtures.semconv.replay import load
from tests.test_semconv_agent_frameworks import run_ag2, run_langgraph
from tests.test_semconv_anthropic import run_openinference, run_own_spans, run_traceloop

SYSTEM = {"role": "system", "content": "You are a weather bot."}
QUESTION = {"role": "user", "content": "Weather in Paris?"}
OPENAI_TOOL_CALL = {"id": "call_weather_1", "name": "get_weather", "arguments": {"city": "Paris"}}
WEATHER_PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def _live(run: Any) -> dict[str, list[SpanRecord]]:
    tracer_provider, collector = provider()
    run(tracer_provider)
    return map_all(collector.spans)


def _is_tool_result(message: dict[str, Any], call_id: str) -> bool:
    return (
        message.get("role") == "tool"
        and message.get("tool_call_id") == call_id
        and "sunny in Paris" in json.dumps(message.get("content"))
    )


def test_strands_legacy_messages_from_per_message_events() -> None:
    """strands_legacy.json: the older conventions, one event per message (gen_ai.system.message,
    gen_ai.user.message, gen_ai.assistant.message, gen_ai.tool.message, gen_ai.choice). Before: `chat` inputs and
    outputs are empty, and the tool span has no arguments or result."""
    records = map_all(load("strands_legacy.json"))
    ask, _ = records["chat"]
    assert ask.payload["inputs"]["messages"] == [SYSTEM, QUESTION]
    assert ask.result_payload["outputs"]["messages"][0]["tool_calls"] == [OPENAI_TOOL_CALL]
    (tool,) = records["execute_tool get_weather"]
    assert tool.payload["inputs"]["arguments"] == {"city": "Paris"}
    assert "sunny in Paris" in json.dumps(tool.result_payload["outputs"]["result"])


def test_ag2_usage_records_are_not_model_calls() -> None:
    """AG2 (live), `record_usage model_call`: a span beside each `chat` that records the call's usage
    (ag2.span.type=usage, gen_ai.response.model, gen_ai.usage.*). Before: typed otel:llm with the same usage as
    the chat span, so every call's tokens count twice."""
    records = _live(run_ag2)
    for usage_span in records["record_usage model_call"]:
        assert usage_span.schema_name != "otel:llm"
        assert not usage_span.payload.get("token_usage") or usage_span.payload["token_usage"].get("aggregated")
    assert {r.schema_name for r in records["chat gpt-tools"]} == {"otel:llm"}


def test_strands_agent_usage_is_marked_aggregated() -> None:
    """Strands, `invoke_agent weather_agent`: gen_ai.usage.* on the agent is the sum of its `chat` spans. Before:
    no `aggregated` flag, so the run's tokens count twice (36 prompt tokens for 18 served)."""
    for fixture in ("strands_attributes.json", "strands_events.json", "strands_legacy.json"):
        (agent,) = map_all(load(fixture))["invoke_agent weather_agent"]
        assert agent.payload["token_usage"]["aggregated"] is True, fixture


def test_equal_duplicate_usage_keys_are_consumed() -> None:
    """Strands `chat` spans carry gen_ai.usage.prompt_tokens / completion_tokens beside input_tokens /
    output_tokens, equal. Before: the duplicates stay in metadata although their value was used."""
    for record in map_all(load("strands_attributes.json"))["chat"]:
        assert record.payload["model"] == TOOL_MODEL
        metadata = record.payload["metadata"]
        assert not {"gen_ai.usage.prompt_tokens", "gen_ai.usage.completion_tokens"} & set(metadata)


def test_adk_legacy_call_llm_carries_the_conversation() -> None:
    """adk_legacy.json (ADK's schema 1, supported to 2027-03), `call_llm`: the request and response are JSON in
    gcp.vertex.agent.llm_request / llm_response. Before: inputs and outputs are empty."""
    first, _ = map_all(load("adk_legacy.json"))["call_llm"]
    assert first.payload["inputs"]["messages"][-1] == QUESTION
    assert first.result_payload["outputs"]["messages"][0]["tool_calls"][0]["name"] == "get_weather"


def test_strands_attributes_agent_carries_its_conversation() -> None:
    """strands_attributes.json, `invoke_agent weather_agent`: gen_ai.input.messages / gen_ai.output.messages are
    on the span. Before: inputs hold only system_instructions, outputs are {}, both stay raw strings in metadata."""
    (agent,) = map_all(load("strands_attributes.json"))["invoke_agent weather_agent"]
    # The agent's system instructions lead its messages, as they do on its `chat` model calls.
    assert agent.payload["inputs"]["messages"] == [SYSTEM, QUESTION]
    (answer,) = agent.result_payload["outputs"]["messages"]
    assert answer["role"] == "assistant" and answer["content"].strip() == "echo: sunny in Paris"
    assert "gen_ai.input.messages" not in agent.payload["metadata"]


def test_strands_events_messages_from_operation_details_events() -> None:
    """strands_events.json: the messages are in `gen_ai.client.inference.operation.details` span events
    (gen_ai.system_instructions, gen_ai.input.messages, gen_ai.output.messages). Before: every `chat` and the
    agent have empty inputs and outputs."""
    records = map_all(load("strands_events.json"))
    ask, answer = records["chat"]
    assert ask.payload["inputs"]["messages"] == [SYSTEM, QUESTION]
    assert ask.result_payload["outputs"]["messages"][0]["tool_calls"] == [OPENAI_TOOL_CALL]
    assert answer.result_payload["outputs"]["messages"][0]["content"] == "echo: sunny in Paris"
    (agent,) = records["invoke_agent weather_agent"]
    assert agent.payload["inputs"]["messages"] == [SYSTEM, QUESTION]
    assert agent.result_payload["outputs"]["messages"][0]["content"].strip() == "echo: sunny in Paris"


def test_dspy_tool_name_arguments_and_result() -> None:
    """dspy_openinference.json, `get_weather.__call__` (and `finish.__call__`): no tool.name, only the span name
    carries it; input.value is {"kwargs": {...}}; output.value is JSON ("\\"sunny in Paris\\""). Before:
    no tool_name, arguments {"kwargs": {"city": "Paris"}}, result "\\"sunny in Paris\\""."""
    records = map_all(load("dspy_openinference.json"))
    (tool,) = records["get_weather.__call__"]
    assert tool.payload["tool_name"] == "get_weather"
    assert tool.payload["inputs"]["arguments"] == {"city": "Paris"}
    assert tool.result_payload["outputs"]["result"] == "sunny in Paris"
    (finish,) = records["finish.__call__"]
    assert finish.payload["tool_name"] == "finish"


def test_anthropic_own_tool_span_result() -> None:
    """Anthropic SDK's own spans (live), `anthropic.custom_tool_use get_weather`: the result is in
    `anthropic.tool_result.content` ([{"type":"text","text":"sunny in Paris"}]). Before: outputs are {}."""
    (tool,) = _live(run_own_spans)["anthropic.custom_tool_use get_weather"]
    assert tool.result_payload["outputs"]["result"] == "sunny in Paris"  # one text block reads as its text
    assert "anthropic.tool_result.content" not in tool.payload["metadata"]


def test_tool_results_sent_back_are_tool_messages() -> None:
    """A GenAI `tool_call_response` part (Anthropic's own spans; Strands) sent back to the model is a tool message:
    role "tool", the call id, the result text. Before: role "user" and the response blocks as a JSON string, e.g.
    {"role": "user", "content": "[{\\"type\\":\\"text\\",\\"text\\":\\"sunny in Paris\\"}]", "tool_call_id": ...}."""
    runner_answer = _live(run_own_spans)["anthropic.messages.create"][4]
    assert _is_tool_result(runner_answer.payload["inputs"]["messages"][0], TOOL_USE_ID)
    _, answer = map_all(load("strands_attributes.json"))["chat"]
    assert _is_tool_result(answer.payload["inputs"]["messages"][3], "call_weather_1")


def test_anthropic_tool_definitions_keep_input_schema() -> None:
    """OpenInference (`llm.tools.0.tool.json_schema`) and Traceloop (`gen_ai.tool.definitions`) give Anthropic's
    tool definition, whose JSON schema is `input_schema`. Before: the definition has name and description only."""
    for run, name in ((run_openinference, "messages.create"), (run_traceloop, "anthropic.chat")):
        first = _live(run)[name][0]
        assert first.payload["tool_definitions"][0]["parameters"] == WEATHER_PARAMETERS, name


def test_anthropic_openinference_output_message_has_no_raw_parts() -> None:
    """OpenInference Anthropic, first `messages.create`: the output message repeats its tool call as a `parts` list
    of raw flattened keys ({"type": "tool_use", "tool_call.id": ..., "tool_call.function.name": ...}) beside
    the mapped `tool_calls`. Expected: the shared message shape only."""
    (asked,) = _live(run_openinference)["messages.create"][0].result_payload["outputs"]["messages"]
    assert "parts" not in asked
    assert asked["tool_calls"] == [{"id": TOOL_USE_ID, "name": "get_weather", "arguments": {"city": "Paris"}}]


def test_langgraph_agent_messages_from_its_input_and_output_value() -> None:
    """LangChain 1.x agent through OpenInference (live), `weather_agent` (AGENT): input.value is
    {"messages": [the question]}, output.value the whole state with the answer last. Before: inputs.value and
    outputs.value hold them as they are, no inputs.messages / outputs.messages."""
    (agent,) = _live(run_langgraph)["weather_agent"]
    assert agent.payload["inputs"]["messages"] == [QUESTION]
    assert agent.result_payload["outputs"]["messages"][-1]["content"] == "echo: sunny in Paris"
    # the output state repeats the question: the agent's output is what it added, from its tool call on
    assert agent.result_payload["outputs"]["messages"][0]["tool_calls"][0]["name"] == "get_weather"
    assert "value" not in agent.payload["inputs"] and "value" not in agent.result_payload["outputs"]


def test_adk_legacy_call_llm_usage_is_counted_once() -> None:
    """adk_legacy.json: ADK runs each model call as a `generate_content` span inside its `call_llm` span, and both
    carry the call's usage. Before: both counted, 160/32 tokens for 80/16 served. `call_llm` stays the model call
    users read (it has the messages); its usage is marked aggregated."""
    records = map_all(load("adk_legacy.json"))
    calls, generated = records["call_llm"], records["generate_content gemini-2.5-flash"]
    assert {r.schema_name for r in calls} == {r.schema_name for r in generated} == {"otel:llm"}
    for call, child in zip(calls, generated, strict=True):
        assert call.payload["token_usage"]["aggregated"] is True
        assert "aggregated" not in child.payload["token_usage"]
        assert call.payload["token_usage"]["prompt_tokens"] == child.payload["token_usage"]["prompt_tokens"]


def test_anthropic_own_spans_finish_reasons() -> None:
    """Anthropic SDK's own spans (live), `anthropic.messages.create`: the stop reason is only in
    `anthropic.message.stop_reason` (its gen_ai.output.messages carry no finish_reason). Before: no finish_reasons,
    the attribute left in metadata."""
    calls = _live(run_own_spans)["anthropic.messages.create"]
    reasons = [call.result_payload.get("finish_reasons") for call in calls]
    assert ["tool_use"] in reasons and ["end_turn"] in reasons
    assert all(reason is not None for reason in reasons)
    assert not any("anthropic.message.stop_reason" in call.payload["metadata"] for call in calls)
