"""pydantic-ai's own instrumentation (formats 5 and 2) with TestModel and FunctionModel: no network at all."""

from __future__ import annotations

import warnings

import pydantic_ai  # noqa: F401  (the test extra installs it; missing = fail, not skip)
import pytest
from opentelemetry.sdk.trace import TracerProvider
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.instrumented import InstrumentationSettings
from pydantic_ai.models.test import TestModel

from prefactor_otel.mapping import SpanRecord
from tests.fixtures.semconv.checks import export_to_devserver, map_all, provider


def _weather(city: str) -> str:
    return f"sunny in {city}"


def _scripted(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    # First call: ask for the tool; second call (the tool result is in the history): answer.
    if len(messages) == 1:
        return ModelResponse(parts=[ToolCallPart("get_weather", {"city": "Oslo"}, tool_call_id="call_oslo")])
    return ModelResponse(parts=[TextPart("Cold and sunny in Oslo.")])


def _run(tracer_provider: TracerProvider, model: object, version: int) -> None:
    agent = Agent(model, name="weather", instructions="Answer in one sentence.")  # type: ignore[call-overload]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # formats 2-4 are deprecated in pydantic-ai 2.x: still deployed, so tested
        agent.instrument = InstrumentationSettings(tracer_provider=tracer_provider, version=version)
    agent.tool_plain(_weather, name="get_weather")
    agent.run_sync("What is the weather in Oslo?")


@pytest.mark.parametrize("version", [5, 2])
def test_function_model_agent_llm_tool_tree(version: int) -> None:
    tracer_provider, collector = provider()
    _run(tracer_provider, FunctionModel(_scripted), version)
    records = map_all(collector.spans)
    agent_name = "invoke_agent weather" if version == 5 else "agent run"
    tool_name = "execute_tool get_weather" if version == 5 else "running tool"
    (agent,) = records[agent_name]
    (tool,) = records[tool_name]
    first_chat, second_chat = records["chat function:_scripted:"]
    assert (agent.schema_name, tool.schema_name, first_chat.schema_name) == ("otel:agent", "otel:tool", "otel:llm")

    # the tree: model calls and the tool run inside the agent run
    for child in (tool, first_chat, second_chat):
        assert child.parent_span_id == agent.span_id
    assert agent.is_local_root

    # agent: name, conversation, the whole conversation in, final result out, the run's aggregated usage
    assert agent.payload["agent_name"] == "weather"
    assert agent.payload["conversation_id"] == agent.payload["session_id"]
    assert agent.payload["model"] == "function:_scripted:"
    conversation = agent.payload["inputs"]["messages"]
    assert conversation[0] == {"role": "system", "content": "Answer in one sentence."}
    assert conversation[1] == {"role": "user", "content": "What is the weather in Oslo?"}
    assert agent.result_payload["outputs"]["result"] == "Cold and sunny in Oslo."
    usage = agent.payload["token_usage"]
    assert usage["aggregated"] is True
    assert (
        usage["prompt_tokens"]
        == first_chat.payload["token_usage"]["prompt_tokens"] + (second_chat.payload["token_usage"]["prompt_tokens"])
    )

    # LLM: model, provider, tool definitions, messages in the shared shape, usage in Prefactor's names
    assert first_chat.payload["model"] == "function:_scripted:"
    assert first_chat.payload["provider"] == "function"
    assert first_chat.payload["tool_definitions"][0]["name"] == "get_weather"
    assert first_chat.payload["inputs"]["messages"][-1] == {"role": "user", "content": "What is the weather in Oslo?"}
    (asked,) = first_chat.result_payload["outputs"]["messages"]
    assert asked["role"] == "assistant"
    assert asked["tool_calls"] == [{"id": "call_oslo", "name": "get_weather", "arguments": {"city": "Oslo"}}]
    assert set(first_chat.payload["token_usage"]) >= {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert first_chat.payload["token_usage"]["prompt_tokens"] > 0
    # the tool result went back to the model, linked by the call id
    tool_result = second_chat.payload["inputs"]["messages"][-1]
    assert tool_result["tool_call_id"] == "call_oslo" and tool_result["content"] == "sunny in Oslo"
    assert second_chat.result_payload["outputs"]["messages"][0]["content"] == "Cold and sunny in Oslo."

    # tool: name, the call id the model used, arguments and result
    assert tool.payload["tool_name"] == "get_weather"
    assert tool.payload["tool_call_id"] == "call_oslo"
    assert tool.payload["inputs"]["arguments"] == {"city": "Oslo"}
    assert tool.result_payload["outputs"]["result"] == "sunny in Oslo"

    # consumed attributes are not repeated in metadata; the convention that decided is recorded
    for record in (agent, tool, first_chat):
        metadata = record.payload["metadata"]
        assert metadata["convention"] == "gen_ai"
        assert not {"gen_ai.input.messages", "gen_ai.tool.call.arguments", "tool_arguments"} & set(metadata)
        assert not {"gen_ai.usage.input_tokens", "gen_ai.aggregated_usage.input_tokens"} & set(metadata)


@pytest.mark.parametrize("version", [5, 2])
def test_test_model_runs_every_tool(version: int) -> None:
    tracer_provider, collector = provider()
    _run(tracer_provider, TestModel(), version)
    records = map_all(collector.spans)
    by_schema: dict[str, list[SpanRecord]] = {}
    for recs in records.values():
        for record in recs:
            by_schema.setdefault(record.schema_name, []).append(record)
    assert set(by_schema) == {"otel:agent", "otel:llm", "otel:tool"}
    (tool,) = by_schema["otel:tool"]
    # TestModel calls every tool with generated arguments; the result is what the tool returned for them
    city = tool.payload["inputs"]["arguments"]["city"]
    assert tool.result_payload["outputs"]["result"] == f"sunny in {city}"
    for llm in by_schema["otel:llm"]:
        assert llm.payload["model"] == "test" and llm.payload["provider"] == "test"
        assert llm.result_payload["response_model"] == "test"


def test_pydantic_ai_end_to_end_through_the_exporter() -> None:
    stored, _ = export_to_devserver(lambda tp: _run(tp, FunctionModel(_scripted), 5))
    by_name = {}
    for span in stored:
        by_name.setdefault(span["payload"]["name"], []).append(span)
    (agent,) = by_name["invoke_agent weather"]
    (tool,) = by_name["execute_tool get_weather"]
    assert agent["schema_name"] == "otel:agent" and tool["schema_name"] == "otel:tool"
    assert {s["schema_name"] for s in by_name["chat function:_scripted:"]} == {"otel:llm"}
    assert tool["parent_span_id"] == agent["id"]
    assert tool["payload"]["inputs"]["arguments"] == {"city": "Oslo"}
    assert tool["result_payload"]["outputs"]["result"] == "sunny in Oslo"
