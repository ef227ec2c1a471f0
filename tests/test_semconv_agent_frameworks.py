"""Agent frameworks of 2026 through the mapping. Live against the fake OpenAI server: AG2's own
TelemetryMiddleware and a LangChain 1.x agent (LangGraph, traced by OpenInference). Recorded
(tests/fixtures/semconv/record_spans.py): Strands Agents (latest conventions with messages in span attributes or
in span events, and the older per-message events), Google ADK (its default GenAI schema and the legacy one), DSPy
through OpenInference and the OpenAI Agents SDK through OpenInference. Each asserts the span types a user expects
and, fully, what the mapping gets right; the gaps issue 13 found and closed are tested in
tests/test_semconv_gaps_13.py."""

from __future__ import annotations

import ag2  # noqa: F401  (the test extra installs it; missing = fail, not skip)
from openinference.instrumentation.langchain import LangChainInstrumentor
from opentelemetry.sdk.trace import TracerProvider

from prefactor_otel.devserver import DevServer
from prefactor_otel.mapping import SpanRecord
from tests.fixtures.semconv.ag2_app import run_ag2_app
from tests.fixtures.semconv.checks import export_to_devserver, map_all, provider
from tests.fixtures.semconv.fake_openai import TOOL_MODEL, FakeOpenAI, TokenLedger
from tests.fixtures.semconv.langgraph_app import run_langgraph_app
from tests.fixtures.semconv.replay import load
from tests.spans import exporter_for

SYSTEM = {"role": "system", "content": "You are a weather bot."}
QUESTION = {"role": "user", "content": "Weather in Paris?"}
OPENAI_TOOL_CALL = {"id": "call_weather_1", "name": "get_weather", "arguments": {"city": "Paris"}}


def run_ag2(tracer_provider: TracerProvider) -> TokenLedger:
    with FakeOpenAI() as fake:
        run_ag2_app(fake, tracer_provider)
    return fake.served


def run_langgraph(tracer_provider: TracerProvider) -> TokenLedger:
    instrumentor = LangChainInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider)
    try:
        with FakeOpenAI() as fake:
            run_langgraph_app(fake)
    finally:
        instrumentor.uninstrument()
    return fake.served


def _types(records: dict[str, list[SpanRecord]]) -> dict[str, set[str]]:
    return {name: {r.schema_name for r in recs} for name, recs in records.items()}


# ---------------------------------------------------------------------------------------------------- AG2, live


def test_ag2_native_telemetry() -> None:
    tracer_provider, collector = provider()
    run_ag2(tracer_provider)
    records = map_all(collector.spans)
    (agent,) = records["invoke_agent weather_agent"]
    (tool,) = records["execute_tool get_weather"]
    ask, answer = records["chat gpt-tools"]
    assert (agent.schema_name, tool.schema_name, ask.schema_name, answer.schema_name) == (
        "otel:agent",
        "otel:tool",
        "otel:llm",
        "otel:llm",
    )
    for child in (tool, ask, answer):
        assert child.parent_span_id == agent.span_id
    assert agent.is_local_root
    assert agent.payload["agent_name"] == "weather_agent"
    assert agent.payload["model"] == TOOL_MODEL and agent.payload["provider"] == "openai"

    assert ask.payload["model"] == TOOL_MODEL
    assert ask.payload["inputs"]["messages"] == [QUESTION]
    assert ask.result_payload["outputs"]["messages"] == [
        {"role": "assistant", "content": None, "tool_calls": [OPENAI_TOOL_CALL]}
    ]
    assert ask.payload["token_usage"] == {
        "prompt_tokens": 11,
        "completion_tokens": 7,
        "total_tokens": 18,
        "cache_read_tokens": 2,
    }
    assert answer.payload["inputs"]["messages"][-1] == {
        "role": "tool",
        "content": "sunny in Paris",
        "tool_call_id": "call_weather_1",
    }
    assert answer.result_payload["outputs"]["messages"] == [{"role": "assistant", "content": "echo: sunny in Paris"}]

    assert tool.payload["tool_name"] == "get_weather"
    assert tool.payload["tool_call_id"] == "call_weather_1"
    assert tool.payload["inputs"]["arguments"] == {"city": "Paris"}
    assert tool.result_payload["outputs"]["result"] == "sunny in Paris"
    # (AG2's `record_usage model_call` spans are not model calls: tests/test_semconv_gaps_13.py)


def test_ag2_end_to_end_through_the_exporter() -> None:
    stored, _ = export_to_devserver(run_ag2)
    by_name = {s["payload"]["name"]: s for s in stored}
    agent, tool = by_name["invoke_agent weather_agent"], by_name["execute_tool get_weather"]
    assert (agent["schema_name"], tool["schema_name"]) == ("otel:agent", "otel:tool")
    assert tool["parent_span_id"] == agent["id"]
    assert tool["result_payload"]["outputs"]["result"] == "sunny in Paris"


# --------------------------------------------------------------------- LangChain 1.x agent (LangGraph), live


def test_langgraph_agent_openinference() -> None:
    tracer_provider, collector = provider()
    run_langgraph(tracer_provider)
    records = map_all(collector.spans)
    (agent,) = records["weather_agent"]
    (tool,) = records["get_weather"]
    ask, answer = records["ChatOpenAI"]
    assert (agent.schema_name, tool.schema_name, ask.schema_name, answer.schema_name) == (
        "otel:agent",
        "otel:tool",
        "otel:llm",
        "otel:llm",
    )
    # the graph's nodes are steps of the agent
    assert _types(records)["model"] == {"otel:chain"} and _types(records)["tools"] == {"otel:chain"}
    assert agent.is_local_root and agent.payload["agent_name"] == "weather_agent"
    (tools_node,) = records["tools"]
    assert tool.parent_span_id == tools_node.span_id and tools_node.parent_span_id == agent.span_id

    assert ask.payload["model"] == f"{TOOL_MODEL}-2026-01-01"  # OpenInference names the model that answered
    assert ask.payload["inputs"]["messages"] == [SYSTEM, QUESTION]
    assert ask.result_payload["outputs"]["messages"] == [
        {"role": "assistant", "content": None, "tool_calls": [OPENAI_TOOL_CALL]}
    ]
    assert ask.payload["token_usage"] == {
        "prompt_tokens": 11,
        "completion_tokens": 7,
        "total_tokens": 18,
        "cache_read_tokens": 2,
    }
    assert answer.result_payload["outputs"]["messages"] == [{"role": "assistant", "content": "echo: sunny in Paris"}]

    assert tool.payload["tool_name"] == "get_weather" and tool.payload["tool_call_id"] == "call_weather_1"
    assert tool.payload["inputs"]["arguments"] == "Paris"  # LangChain hands a one-argument tool its bare value
    assert tool.result_payload["outputs"]["result"] == "sunny in Paris"


# ------------------------------------------------------------------------------------------------ Strands Agents


def test_strands_messages_in_span_attributes() -> None:
    records = map_all(load("strands_attributes.json"))
    (agent,) = records["invoke_agent weather_agent"]
    (tool,) = records["execute_tool get_weather"]
    ask, answer = records["chat"]
    first_cycle, second_cycle = records["execute_event_loop_cycle"]
    assert (agent.schema_name, tool.schema_name, ask.schema_name, answer.schema_name) == (
        "otel:agent",
        "otel:tool",
        "otel:llm",
        "otel:llm",
    )
    # the event loop's cycles are steps of the agent, not model calls, tools or agents of their own
    assert {first_cycle.schema_name, second_cycle.schema_name} <= {"otel:span", "otel:chain"}
    assert first_cycle.parent_span_id == agent.span_id and second_cycle.parent_span_id == agent.span_id
    assert ask.parent_span_id == tool.parent_span_id == first_cycle.span_id
    assert answer.parent_span_id == second_cycle.span_id

    assert agent.payload["agent_name"] == "weather_agent" and agent.payload["model"] == TOOL_MODEL
    assert agent.payload["inputs"]["messages"][0] == SYSTEM  # gen_ai.system_instructions leads the conversation

    assert ask.payload["model"] == TOOL_MODEL
    assert ask.payload["inputs"]["messages"] == [SYSTEM, QUESTION]
    assert ask.result_payload["outputs"]["messages"] == [
        {"role": "assistant", "content": None, "tool_calls": [OPENAI_TOOL_CALL], "finish_reason": "tool_use"}
    ]
    assert ask.payload["token_usage"] == {
        "prompt_tokens": 9,
        "completion_tokens": 4,
        "total_tokens": 13,
        "cache_read_tokens": 2,
    }
    assert answer.payload["inputs"]["messages"][2] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [OPENAI_TOOL_CALL],
    }
    assert answer.result_payload["outputs"]["messages"] == [
        {"role": "assistant", "content": "echo: sunny in Paris", "finish_reason": "end_turn"}
    ]

    assert tool.payload["tool_name"] == "get_weather" and tool.payload["tool_call_id"] == "call_weather_1"
    assert tool.payload["inputs"]["arguments"] == {"city": "Paris"}
    assert tool.result_payload["outputs"]["result"] == "sunny in Paris"  # gen_ai.tool.call.result [{"text": ...}]


def test_strands_messages_in_span_events() -> None:
    records = map_all(load("strands_events.json"))
    (agent,) = records["invoke_agent weather_agent"]
    (tool,) = records["execute_tool get_weather"]
    assert _types(records)["chat"] == {"otel:llm"}
    assert (agent.schema_name, tool.schema_name) == ("otel:agent", "otel:tool")
    assert agent.payload["agent_name"] == "weather_agent"
    for llm in records["chat"]:
        assert llm.payload["model"] == TOOL_MODEL and llm.payload["provider"] == "strands-agents"
        assert llm.payload["token_usage"]["prompt_tokens"] == 9
    # latest conventions: the tool's arguments and result are span attributes even when messages are events
    assert tool.payload["tool_name"] == "get_weather" and tool.payload["tool_call_id"] == "call_weather_1"
    assert tool.payload["inputs"]["arguments"] == {"city": "Paris"}
    assert tool.result_payload["outputs"]["result"] == "sunny in Paris"  # gen_ai.tool.call.result [{"text": ...}]
    # (the messages in gen_ai.client.inference.operation.details events: tests/test_semconv_gaps_13.py)


def test_strands_legacy_per_message_events() -> None:
    records = map_all(load("strands_legacy.json"))
    (agent,) = records["invoke_agent weather_agent"]
    (tool,) = records["execute_tool get_weather"]
    assert _types(records)["chat"] == {"otel:llm"}
    assert (agent.schema_name, tool.schema_name) == ("otel:agent", "otel:tool")
    assert agent.payload["agent_name"] == "weather_agent"
    assert tool.payload["tool_name"] == "get_weather" and tool.payload["tool_call_id"] == "call_weather_1"
    for llm in records["chat"]:
        assert llm.payload["token_usage"]["completion_tokens"] == 4


# ---------------------------------------------------------------------------------------------------- Google ADK


def test_adk_default_schema() -> None:
    records = map_all(load("adk.json"))
    (workflow,) = records["invoke_workflow weather_agent"]
    (agent,) = records["invoke_agent weather_agent"]
    (tool,) = records["execute_tool get_weather"]
    ask, answer = records["generate_content gemini-2.5-flash"]
    assert (workflow.schema_name, agent.schema_name, tool.schema_name) == ("otel:chain", "otel:agent", "otel:tool")
    assert {ask.schema_name, answer.schema_name} == {"otel:llm"}
    assert workflow.is_local_root and agent.parent_span_id == workflow.span_id
    for child in (ask, tool, answer):
        assert child.parent_span_id == agent.span_id
    assert agent.payload["agent_name"] == "weather_agent"

    assert ask.payload["model"] == "gemini-2.5-flash" and ask.payload["provider"] == "gcp.gemini"
    system = {
        "role": "system",
        "content": 'You are a weather bot.\n\nYou are an agent. Your internal name is "weather_agent".',
    }
    assert ask.payload["inputs"]["messages"] == [system, QUESTION]
    (asked,) = ask.result_payload["outputs"]["messages"]
    assert asked["tool_calls"] == [{"id": "get_weather_0", "name": "get_weather", "arguments": {"city": "Paris"}}]
    assert ask.payload["tool_definitions"][0]["name"] == "get_weather"
    assert ask.payload["token_usage"] == {"prompt_tokens": 35, "completion_tokens": 8, "total_tokens": 43}
    assert answer.payload["token_usage"] == {"prompt_tokens": 45, "completion_tokens": 8, "total_tokens": 53}
    assert answer.result_payload["outputs"]["messages"][0]["content"] == "echo: Weather in Paris?"

    assert tool.payload["tool_name"] == "get_weather" and tool.payload["tool_call_id"].startswith("adk-")
    assert tool.payload["inputs"]["arguments"] == {"city": "Paris"}
    assert tool.result_payload["outputs"]["result"] == {"result": "sunny in Paris"}
    assert tool.status == "complete"


def test_adk_legacy_schema() -> None:
    records = map_all(load("adk_legacy.json"))
    (agent,) = records["invoke_agent weather_agent"]
    (tool,) = records["execute_tool get_weather"]
    assert (agent.schema_name, tool.schema_name) == ("otel:agent", "otel:tool")
    assert _types(records)["call_llm"] == {"otel:llm"}
    for call in records["call_llm"]:
        assert call.payload["model"] == "gemini-2.5-flash" and call.parent_span_id == agent.span_id
    assert tool.payload["inputs"]["arguments"] == {"city": "Paris"}
    assert tool.result_payload["outputs"]["result"] == {"result": "sunny in Paris"}
    # (the generate_content spans inside call_llm repeat its usage, counted once: tests/test_semconv_gaps_13.py)


# ------------------------------------------------------------------------------------------- DSPy (OpenInference)


def test_dspy_openinference() -> None:
    records = map_all(load("dspy_openinference.json"))
    (react,) = records["ReAct.forward"]
    assert react.is_local_root and react.schema_name == "otel:chain"  # OpenInference says CHAIN
    assert _types(records)["LM.__call__"] == {"otel:llm"}
    assert _types(records)["get_weather.__call__"] == {"otel:tool"}
    assert _types(records)["ChainOfThought.forward"] == {"otel:chain"}
    first, _, extract = records["LM.__call__"]
    assert first.payload["model"] == "dspy-fake" and first.payload["provider"] == "openai"
    assert [m["role"] for m in first.payload["inputs"]["messages"]] == ["system", "user"]
    assert "[[ ## next_tool_name ## ]]\nget_weather" in first.result_payload["outputs"]["messages"][0]["content"]
    assert "It is sunny in Paris." in extract.result_payload["outputs"]["messages"][0]["content"]
    assert react.result_payload["outputs"]["value"]["answer"] == "It is sunny in Paris."
    # DSPy's LM spans carry no usage at all: nothing is invented for them
    assert all(r.payload["token_usage"] is None for recs in records.values() for r in recs)
    # the program's signature is what a DSPy user reads first: not a secret, so not masked by the `signature` key
    adapter = records["ChatAdapter.__call__"][0]
    assert adapter.payload["inputs"]["value"]["signature"].startswith("StringSignature(question, trajectory ->")


# ----------------------------------------------------------------------------- OpenAI Agents SDK (OpenInference)


def test_openai_agents_openinference() -> None:
    records = map_all(load("openai_agents_openinference.json"))
    (agent,) = records["weather_agent"]
    (tool,) = records["get_weather"]
    ask, answer = records["generation"]
    assert (agent.schema_name, tool.schema_name, ask.schema_name, answer.schema_name) == (
        "otel:agent",
        "otel:tool",
        "otel:llm",
        "otel:llm",
    )
    assert _types(records)["turn"] == {"otel:chain"}
    assert agent.payload["agent_name"] == "weather_agent"
    assert ask.payload["model"] == TOOL_MODEL and ask.payload["provider"] == "openai"
    assert ask.payload["inputs"]["messages"] == [SYSTEM, QUESTION]
    assert ask.result_payload["outputs"]["messages"] == [
        {"role": "assistant", "content": None, "tool_calls": [OPENAI_TOOL_CALL]}
    ]
    assert ask.payload["token_usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    assert answer.payload["inputs"]["messages"][-1] == {
        "role": "tool",
        "content": "sunny in Paris",
        "tool_call_id": "call_weather_1",
    }
    assert tool.payload["tool_name"] == "get_weather"
    assert tool.payload["inputs"]["arguments"] == {"city": "Paris"}
    assert tool.result_payload["outputs"]["result"] == "sunny in Paris"


def test_recorded_frameworks_end_to_end_through_the_exporter() -> None:
    """Every recorded framework's spans through the exporter into the local server: all stored, none refused,
    no strict-mode finding (tests/conftest.py)."""
    names = [
        "strands_attributes.json",
        "strands_events.json",
        "strands_legacy.json",
        "adk.json",
        "adk_legacy.json",
        "dspy_openinference.json",
        "openai_agents_openinference.json",
    ]
    with DevServer() as server:
        exporter = exporter_for(server, finish_grace_seconds=0, spool=False)
        total = 0
        for name in names:
            spans = load(name)
            total += len(spans)
            exporter.export(spans)
        exporter.shutdown()
        stats = exporter.stats()
        stored = server.spans()
    assert stats["spans_dropped"] == 0, stats
    assert len(stored) == total
