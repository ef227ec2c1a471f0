"""TypeScript agent libraries through the mapping (issue 25): the Vercel AI SDK's `ai.*` telemetry (AI SDK 6, and 7
through its legacy integration), Mastra, and OpenAI Agents JS and LangChain.js through OpenInference.

Their spans were recorded from the real libraries (tests/fixtures/semconv/ts/: pinned npm packages, the repo's fake
OpenAI server on 127.0.0.1, the OTel JS OTLP/HTTP exporter; record.py says how to re-record) as the OTLP request
bodies the exporters sent: the AI SDK's as OTLP/protobuf, Mastra's as OTLP/JSON. Here they are decoded with the
gateway's codec (`prefactor_otel.gateway.otlp`) and mapped, so the suite needs neither Node nor the network. Each
test asserts the span types a user expects, the typed fields (model and tokens on model calls; name, arguments and
result on tools; prompt and answer on agent runs), that the consumed attributes are gone from `metadata`, that every
payload validates against its schema (`checks.map_all`), and the token-total property: the usage of the spans not
marked aggregated adds up to what the fake server handed out.
"""

from __future__ import annotations

import json

import pytest

from prefactor_otel.mapping import SpanRecord, map_span
from tests.fixtures.semconv.checks import check_record, map_all, provider, tokens_counted
from tests.fixtures.semconv.ts.record import load_spans, served_tokens

SYSTEM = {"role": "system", "content": "You are a weather bot."}
QUESTION = {"role": "user", "content": "Weather in Paris?"}
TOOL_CALL = {"id": "call_weather_1", "name": "get_weather", "arguments": {"city": "Paris"}}
FORECAST = {"city": "Paris", "forecast": "sunny, 21 C"}
ANSWER = {"role": "assistant", "content": 'echo: {"city":"Paris","forecast":"sunny, 21 C"}'}


def _by_trace(records: dict[str, list[SpanRecord]], name: str, root_agent: str) -> dict[str, list[SpanRecord]]:
    """The records of the trace whose root span `name` has agent_name `root_agent`, by span name."""
    (root,) = [r for r in records[name] if r.payload.get("agent_name") == root_agent and r.parent_span_id is None]
    out: dict[str, list[SpanRecord]] = {}
    for recs in records.values():
        for record in recs:
            if record.trace_id == root.trace_id:
                out.setdefault(record.name, []).append(record)
    return out


def _types(records: dict[str, list[SpanRecord]]) -> dict[str, set[str]]:
    return {name: {r.schema_name for r in recs} for name, recs in records.items()}


def _metadata_lacks(record: SpanRecord, *keys: str) -> None:
    left = sorted(key for key in keys if key in record.payload["metadata"])
    assert not left, f"{record.name}: {left} repeated in metadata"


# ------------------------------------------------------------------------------------------- Vercel AI SDK


@pytest.fixture(scope="module")
def ai_sdk() -> dict[str, list[SpanRecord]]:
    return map_all(load_spans("ai_sdk.json"))


def test_ai_sdk_every_span_is_typed(ai_sdk: dict[str, list[SpanRecord]]) -> None:
    assert _types(ai_sdk) == {
        "ai.generateText": {"otel:agent"},
        "ai.generateText.doGenerate": {"otel:llm"},
        "ai.toolCall": {"otel:tool"},
        "ai.streamText": {"otel:agent"},
        "ai.streamText.doStream": {"otel:llm"},
        "ai.generateObject": {"otel:agent"},
        "ai.generateObject.doGenerate": {"otel:llm"},
        "ai.streamObject": {"otel:agent"},
        "ai.streamObject.doStream": {"otel:llm"},
        "ai.embed": {"otel:embedding"},
        "ai.embed.doEmbed": {"otel:embedding"},
        "ai.embedMany": {"otel:embedding"},
        "ai.embedMany.doEmbed": {"otel:embedding"},
    }
    for records in ai_sdk.values():
        for record in records:
            assert record.convention == "vercel_ai"
            assert record.payload["operation"] == record.name
            # the SDK's copies of the operation and of the functionId are the payload's `operation` / agent name
            _metadata_lacks(record, "ai.operationId", "operation.name", "resource.name")
            if record.schema_name in ("otel:llm", "otel:embedding"):
                assert record.payload["model"] and record.payload["provider"].startswith("openai.")
                _metadata_lacks(record, "ai.model.id", "ai.model.provider", "gen_ai.request.model", "gen_ai.system")


def test_ai_sdk_generate_text_tool_loop(ai_sdk: dict[str, list[SpanRecord]]) -> None:
    trace = _by_trace(ai_sdk, "ai.generateText", "weather-agent")
    (root,) = trace["ai.generateText"]
    ask, answer = trace["ai.generateText.doGenerate"]
    (tool,) = trace["ai.toolCall"]
    # the root: the app's agent run, its prompt in and its answer out, the usage of its two model calls summed
    assert root.parent_span_id is None
    assert root.payload["agent_name"] == "weather-agent"
    assert (root.payload["model"], root.payload["provider"]) == ("gpt-tools", "openai.chat")
    assert root.payload["params"] == {"temperature": 0.2, "max_tokens": 50}
    assert root.payload["inputs"] == {"messages": [SYSTEM, QUESTION]}
    assert root.result_payload["outputs"] == {"messages": [ANSWER]}
    assert root.result_payload["finish_reasons"] == ["stop"]
    assert root.payload["token_usage"] == {
        "prompt_tokens": 22,
        "completion_tokens": 14,
        "total_tokens": 36,
        "cache_read_tokens": 4,
        "reasoning_tokens": 0,
        "aggregated": True,
    }
    _metadata_lacks(root, "ai.prompt", "ai.response.text", "ai.response.finishReason", "ai.usage.inputTokens")
    _metadata_lacks(root, "ai.telemetry.functionId", "ai.settings.temperature", "ai.settings.maxOutputTokens")
    # the model calls: model, provider, parameters, tools, messages, finish reason, response facts, own usage
    for call in (ask, answer):
        assert call.parent_span_id == root.span_id
        assert (call.payload["model"], call.payload["provider"]) == ("gpt-tools", "openai.chat")
        assert call.payload["params"] == {"temperature": 0.2, "max_tokens": 50, "tool_choice": {"type": "auto"}}
        (definition,) = call.payload["tool_definitions"]
        assert definition["name"] == "get_weather" and definition["parameters"]["properties"] == {
            "city": {"type": "string"}
        }
        assert call.result_payload["response_model"] == "gpt-tools-2026-01-01"
        assert call.result_payload["response_id"] == "chatcmpl-fake-1"
        assert call.payload["token_usage"] == {
            "prompt_tokens": 11,
            "completion_tokens": 7,
            "total_tokens": 18,
            "cache_read_tokens": 2,
            "reasoning_tokens": 0,
        }
        _metadata_lacks(
            call,
            "ai.prompt.messages",
            "ai.prompt.tools",
            "ai.prompt.toolChoice",
            "ai.response.finishReason",
            "ai.response.model",
            "ai.response.id",
            "ai.settings.temperature",
            "ai.usage.inputTokens",
            "ai.usage.outputTokens",
            "ai.usage.totalTokens",
            "ai.usage.cachedInputTokens",
            "ai.usage.inputTokenDetails.cacheReadTokens",
            "ai.usage.reasoningTokens",
            "ai.usage.outputTokenDetails.reasoningTokens",
        )
    assert ask.payload["inputs"] == {"messages": [SYSTEM, QUESTION]}
    assert ask.result_payload["outputs"] == {
        "messages": [{"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}]
    }
    assert ask.result_payload["finish_reasons"] == ["tool-calls"]
    _metadata_lacks(ask, "ai.response.toolCalls")
    assert answer.payload["inputs"]["messages"] == [
        SYSTEM,
        QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
        {
            "role": "tool",
            "content": '{"city":"Paris","forecast":"sunny, 21 C"}',
            "tool_call_id": "call_weather_1",
            "name": "get_weather",
        },
    ]
    assert answer.result_payload["outputs"] == {"messages": [ANSWER]}
    assert answer.result_payload["finish_reasons"] == ["stop"]
    # the tool: name, call id, arguments in, result out
    assert tool.parent_span_id == root.span_id
    assert (tool.payload["tool_name"], tool.payload["tool_call_id"]) == ("get_weather", "call_weather_1")
    assert tool.payload["inputs"] == {"arguments": {"city": "Paris"}}
    assert tool.result_payload["outputs"] == {"result": FORECAST}
    assert tool.status == "complete"
    _metadata_lacks(tool, "ai.toolCall.name", "ai.toolCall.id", "ai.toolCall.args", "ai.toolCall.result")


def test_ai_sdk_tool_that_throws(ai_sdk: dict[str, list[SpanRecord]]) -> None:
    trace = _by_trace(ai_sdk, "ai.generateText", "broken-weather-agent")
    (tool,) = trace["ai.toolCall"]
    _, answer = trace["ai.generateText.doGenerate"]
    (root,) = trace["ai.generateText"]
    assert tool.status == "failed"
    assert tool.payload["tool_name"] == "get_weather"
    assert tool.payload["inputs"] == {"arguments": {"city": "Paris"}}
    assert tool.result_payload["error"]["message"] == "weather service unavailable"
    assert tool.result_payload["outputs"] == {}
    # the SDK hands the error back to the model as the tool's result, and the run goes on
    assert answer.payload["inputs"]["messages"][-1] == {
        "role": "tool",
        "content": "weather service unavailable",
        "tool_call_id": "call_weather_1",
        "name": "get_weather",
    }
    assert root.status == "complete"
    assert root.result_payload["outputs"]["messages"][0]["content"] == "echo: weather service unavailable"


def test_ai_sdk_stream_text(ai_sdk: dict[str, list[SpanRecord]]) -> None:
    (root,) = ai_sdk["ai.streamText"]
    (call,) = ai_sdk["ai.streamText.doStream"]
    assert root.payload["agent_name"] == "streamer"
    assert root.payload["inputs"] == {"messages": [{"role": "user", "content": "stream please"}]}
    streamed = {"role": "assistant", "content": "echo: stream please"}
    assert root.result_payload["outputs"] == {"messages": [streamed]}
    assert root.payload["token_usage"]["aggregated"] is True
    assert call.payload["model"] == "gpt-4o"
    assert call.payload["inputs"] == {"messages": [{"role": "user", "content": "stream please"}]}
    assert call.result_payload["outputs"] == {"messages": [streamed]}
    assert call.result_payload["finish_reasons"] == ["stop"]
    assert call.result_payload["ttft_ms"] > 0  # from the SDK's ai.stream.firstChunk event
    assert call.payload["token_usage"] == {
        "prompt_tokens": 9,
        "completion_tokens": 4,
        "total_tokens": 13,
        "cache_read_tokens": 2,
        "reasoning_tokens": 0,
    }


def test_ai_sdk_generate_object(ai_sdk: dict[str, list[SpanRecord]]) -> None:
    (root,) = ai_sdk["ai.generateObject"]
    (call,) = ai_sdk["ai.generateObject.doGenerate"]
    assert root.payload["agent_name"] == "forecaster"
    assert root.payload["inputs"] == {"messages": [{"role": "user", "content": "Forecast for Paris as JSON"}]}
    assert root.result_payload["outputs"] == {"result": {"city": "sunny", "forecast": "sunny"}}
    assert root.payload["token_usage"] == {
        "prompt_tokens": 11,
        "completion_tokens": 7,
        "total_tokens": 18,
        "aggregated": True,
    }
    _metadata_lacks(root, "ai.response.object", "ai.usage.promptTokens", "ai.usage.completionTokens")
    (message,) = call.result_payload["outputs"]["messages"]
    assert message["role"] == "assistant" and message["content"] == '{"city": "sunny", "forecast": "sunny"}'
    assert call.payload["token_usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    _metadata_lacks(call, "ai.response.object")


def test_ai_sdk_stream_object(ai_sdk: dict[str, list[SpanRecord]]) -> None:
    (root,) = ai_sdk["ai.streamObject"]
    (call,) = ai_sdk["ai.streamObject.doStream"]
    assert root.payload["agent_name"] == "stream-forecaster"
    assert root.result_payload["outputs"] == {"result": {"city": "sunny", "forecast": "sunny"}}
    assert root.payload["token_usage"]["aggregated"] is True
    assert call.result_payload["outputs"]["messages"][0]["content"] == '{"city":"sunny","forecast":"sunny"}'
    assert call.result_payload["ttft_ms"] > 0
    assert "aggregated" not in call.payload["token_usage"]


def test_ai_sdk_embeddings(ai_sdk: dict[str, list[SpanRecord]]) -> None:
    for root_name, texts in (("ai.embed", ["alpha"]), ("ai.embedMany", ["alpha", "beta"])):
        (root,) = ai_sdk[root_name]
        (call,) = ai_sdk[f"{root_name}.doEmbed"]
        assert call.parent_span_id == root.span_id
        for record in (root, call):
            assert record.payload["model"] == "text-embedding-3-small"
            assert record.payload["provider"] == "openai.embedding"
            assert record.payload["inputs"] == {"texts": texts}
            assert record.result_payload["vector_count"] == len(texts)
            assert record.result_payload["dimension_count"] == 3
            # the vectors are counted, not sent
            _metadata_lacks(record, "ai.values", "ai.value", "ai.embeddings", "ai.embedding", "ai.usage.tokens")
        assert call.payload["token_usage"] == {"prompt_tokens": 4 * len(texts)}
        # the root's usage repeats its doEmbed child's
        assert root.payload["token_usage"] == {"prompt_tokens": 4 * len(texts), "aggregated": True}


def test_ai_sdk_failed_model_call(ai_sdk: dict[str, list[SpanRecord]]) -> None:
    trace = _by_trace(ai_sdk, "ai.generateText", "failing-agent")
    (root,) = trace["ai.generateText"]
    (call,) = trace["ai.generateText.doGenerate"]
    for record in (root, call):
        assert record.status == "failed"
        assert record.result_payload["error"]["error_type"] == "AI_APICallError"
        assert record.result_payload["error"]["message"] == "fake upstream exploded"
        assert record.payload["model"] == "fail-500"
        assert record.payload["token_usage"] is None
    assert call.payload["inputs"] == {"messages": [{"role": "user", "content": "fail please"}]}


def test_ai_sdk_7_legacy_integration() -> None:
    """AI SDK 7 writes the same `ai.*` spans through @ai-sdk/otel's LegacyOpenTelemetry (recorded as OTLP/JSON)."""
    v7 = map_all(load_spans("ai_sdk_7_legacy.json"))
    v6 = map_all(load_spans("ai_sdk.json"))
    assert _types(v7) == _types(v6)
    trace = _by_trace(v7, "ai.generateText", "weather-agent")
    (root,) = trace["ai.generateText"]
    ask, answer = trace["ai.generateText.doGenerate"]
    (tool,) = trace["ai.toolCall"]
    assert root.payload["inputs"] == {"messages": [SYSTEM, QUESTION]}
    assert root.result_payload["outputs"]["messages"][0]["content"] == ANSWER["content"]
    assert root.payload["token_usage"]["aggregated"] is True
    for call in (ask, answer):
        assert (call.payload["model"], call.payload["provider"]) == ("gpt-tools", "openai.chat")
        assert (call.payload["token_usage"]["prompt_tokens"], call.payload["token_usage"]["completion_tokens"]) == (
            11,
            7,
        )
    assert ask.result_payload["outputs"]["messages"][0]["tool_calls"] == [TOOL_CALL]
    assert answer.payload["inputs"]["messages"][-1]["role"] == "tool"
    assert (tool.payload["tool_name"], tool.payload["inputs"]) == ("get_weather", {"arguments": {"city": "Paris"}})
    assert tool.result_payload["outputs"] == {"result": FORECAST}
    (broken,) = _by_trace(v7, "ai.generateText", "broken-weather-agent")["ai.toolCall"]
    assert broken.status == "failed" and broken.result_payload["error"]["message"] == "weather service unavailable"
    # AI SDK 7 reports generateObject's usage as inputTokens / outputTokens (6: promptTokens / completionTokens)
    (obj,) = v7["ai.generateObject"]
    assert obj.result_payload["outputs"] == {"result": {"city": "sunny", "forecast": "sunny"}}
    assert obj.payload["token_usage"]["prompt_tokens"] == 11


def _mapped(name: str, attributes: dict[str, object]) -> SpanRecord:
    tracer_provider, collector = provider()
    with tracer_provider.get_tracer("ai").start_as_current_span(name, attributes=attributes):  # type: ignore[arg-type]
        pass
    record = map_span(collector.spans[0])
    check_record(record)
    return record


def test_ai_sdk_shapes_beyond_the_recording() -> None:
    """AI SDK 4's names (`args`, `result`, `promptTokens`, `maxTokens`), a prompt given as messages, reasoning, and
    the v5+ tool-result output envelope of each kind: as the SDK's source writes them."""
    root = _mapped(
        "ai.generateText",
        {
            "ai.operationId": "ai.generateText",
            "ai.model.id": "gpt-4o",
            "ai.model.provider": "openai.chat",
            "ai.settings.maxTokens": 64,
            "ai.prompt": json.dumps(
                {"system": "Be brief.", "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}
            ),
            "ai.response.text": "Hello",
            "ai.response.reasoning": "The user greets.",
            "ai.response.toolCalls": json.dumps([{"toolCallId": "c1", "toolName": "f", "args": '{"x": 1}'}]),
            "ai.usage.promptTokens": 5,
            "ai.usage.completionTokens": 2,
        },
    )
    assert root.schema_name == "otel:agent"
    assert root.payload["params"] == {"max_tokens": 64}
    assert root.payload["inputs"] == {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    }
    assert root.result_payload["outputs"] == {
        "messages": [
            {
                "role": "assistant",
                "content": "Hello",
                "tool_calls": [{"id": "c1", "name": "f", "arguments": {"x": 1}}],
                "parts": [{"type": "reasoning", "content": "The user greets."}],
            }
        ]
    }
    assert root.payload["token_usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "total_tokens": 7,
        "aggregated": True,
    }
    v4_messages = [
        {
            "role": "assistant",
            "content": [{"type": "tool-call", "toolCallId": "c1", "toolName": "f", "args": {"x": 1}}],
        },
        {"role": "tool", "content": [{"type": "tool-result", "toolCallId": "c1", "toolName": "f", "result": 42}]},
    ]
    envelopes = [
        {"type": "text", "value": "plain"},
        {"type": "json", "value": {"ok": True}},
        {"type": "error-text", "value": "boom"},
        {"type": "content", "value": [{"type": "text", "text": "as blocks"}]},
    ]
    v5_messages = [
        {"role": "tool", "content": [{"type": "tool-result", "toolCallId": f"c{i}", "toolName": "f", "output": o}]}
        for i, o in enumerate(envelopes)
    ]
    call = _mapped(
        "ai.generateText.doGenerate",
        {
            "ai.operationId": "ai.generateText.doGenerate",
            "ai.model.id": "gpt-4o",
            "ai.prompt.messages": json.dumps(v4_messages + v5_messages),
            "ai.response.text": "done",
        },
    )
    assert call.schema_name == "otel:llm" and call.payload["model"] == "gpt-4o"
    messages = call.payload["inputs"]["messages"]
    assert messages[0]["tool_calls"] == [{"id": "c1", "name": "f", "arguments": {"x": 1}}]
    assert [m["content"] for m in messages[1:]] == ["42", "plain", '{"ok":true}', "boom", "as blocks"]
    assert all(m["role"] == "tool" for m in messages[1:])


@pytest.mark.parametrize(
    ("written", "result"),
    [
        ('"sunny in Paris"', "sunny in Paris"),
        ("42", 42),
        ("true", True),
        ('{"ok":1}', {"ok": 1}),
        ("not json", "not json"),
    ],
)
def test_ai_sdk_tool_result_is_always_json(written: str, result: object) -> None:
    """The SDK writes `JSON.stringify(output)`: a tool returning a string records '"sunny in Paris"'."""
    tool = _mapped(
        "ai.toolCall",
        {
            "ai.operationId": "ai.toolCall",
            "ai.toolCall.name": "f",
            "ai.toolCall.args": '"Paris"',
            "ai.toolCall.result": written,
        },
    )
    assert tool.payload["inputs"] == {"arguments": "Paris"}
    assert tool.result_payload["outputs"] == {"result": result}


def test_ai_sdk_rerank() -> None:
    """rerank has no provider in @ai-sdk/openai to record against: its spans as the SDK's source writes them."""
    documents = [json.dumps("sunny in Paris"), json.dumps({"text": "rain in Oslo"})]
    common = {"ai.model.id": "rerank-v3.5", "ai.model.provider": "cohere.reranking", "ai.documents": documents}
    root = _mapped("ai.rerank", {"ai.operationId": "ai.rerank", **common})
    call = _mapped(
        "ai.rerank.doRerank",
        {
            "ai.operationId": "ai.rerank.doRerank",
            **common,
            "ai.ranking.type": "text",
            "ai.ranking": [
                json.dumps({"index": 1, "relevanceScore": 0.9}),
                json.dumps({"index": 0, "relevanceScore": 0.2}),
            ],
        },
    )
    for record in (root, call):
        assert record.schema_name == "otel:retriever"
        assert record.payload["model"] == "rerank-v3.5"
        assert record.payload["inputs"]["documents"] == [
            {"id": "0", "content": "sunny in Paris"},
            {"id": "1", "content": {"text": "rain in Oslo"}},
        ]
    assert call.result_payload["outputs"]["documents"] == [
        {"id": "1", "content": {"text": "rain in Oslo"}, "score": 0.9},
        {"id": "0", "content": "sunny in Paris", "score": 0.2},
    ]
    _metadata_lacks(call, "ai.documents", "ai.ranking", "ai.model.id")


def test_mastra_structured_output() -> None:
    agent = _mapped(
        "invoke_agent Forecaster",
        {
            "gen_ai.operation.name": "invoke_agent",
            "mastra.span.type": "agent_run",
            "gen_ai.agent.name": "Forecaster",
            "mastra.agent_run.input": json.dumps([{"role": "user", "content": "Forecast?"}]),
            "mastra.agent_run.output": json.dumps({"text": "", "object": {"forecast": "sunny"}, "files": []}),
        },
    )
    assert agent.payload["inputs"] == {"messages": [{"role": "user", "content": "Forecast?"}]}
    assert agent.result_payload["outputs"] == {"result": {"forecast": "sunny"}}


# ------------------------------------------------------------------------------------------------- Mastra


@pytest.fixture(scope="module")
def mastra() -> dict[str, list[SpanRecord]]:
    return map_all(load_spans("mastra.json"))


def test_mastra_every_span_is_typed(mastra: dict[str, list[SpanRecord]]) -> None:
    assert _types(mastra) == {
        "invoke_agent Weather Agent": {"otel:agent"},
        "invoke_agent Broken Agent": {"otel:agent"},
        "invoke_agent Chat Agent": {"otel:agent"},
        "model_generation gpt-tools": {"otel:chain"},
        "model_generation gpt-4o": {"otel:chain"},
        "agent_step Weather Agent": {"otel:chain"},
        "agent_step Broken Agent": {"otel:chain"},
        "agent_step Chat Agent": {"otel:chain"},
        "chat gpt-tools": {"otel:llm"},
        "chat gpt-4o": {"otel:llm"},
        "execute_tool get_weather": {"otel:tool"},
        "invoke_workflow city-workflow": {"otel:chain"},
        "workflow_step pick-city": {"otel:chain"},
        "workflow_step describe-city": {"otel:chain"},
        # the chunks of a streamed answer: plain spans, their chunk as the output value
        "model_chunk Weather Agent": {"otel:span"},
        "model_chunk Broken Agent": {"otel:span"},
        "model_chunk Chat Agent": {"otel:span"},
    }


def test_mastra_agent_with_a_tool(mastra: dict[str, list[SpanRecord]]) -> None:
    trace = _by_trace(mastra, "invoke_agent Weather Agent", "Weather Agent")
    (agent,) = trace["invoke_agent Weather Agent"]
    (tool,) = trace["execute_tool get_weather"]
    ask, answer = trace["chat gpt-tools"]
    assert agent.parent_span_id is None
    assert (agent.payload["agent_name"], agent.payload["agent_id"]) == ("Weather Agent", "weather-agent")
    assert agent.payload["inputs"] == {"messages": [SYSTEM, QUESTION]}
    assert agent.result_payload["outputs"] == {"messages": [ANSWER]}
    _metadata_lacks(agent, "mastra.agent_run.input", "mastra.agent_run.output", "gen_ai.system_instructions")
    assert (tool.payload["tool_name"], tool.payload["tool_call_id"]) == ("get_weather", "call_weather_1")
    assert tool.payload["inputs"] == {"arguments": {"city": "Paris"}}
    assert tool.result_payload["outputs"] == {"result": FORECAST}
    for call, reason in ((ask, "tool-calls"), (answer, "stop")):
        assert (call.payload["model"], call.payload["provider"]) == ("gpt-tools", "openai.chat")
        assert call.result_payload["response_model"] == "gpt-tools-2026-01-01"
        assert call.result_payload["finish_reasons"] == [reason]  # Mastra writes the list as JSON text
        assert call.payload["token_usage"] == {
            "prompt_tokens": 11,
            "completion_tokens": 7,
            "total_tokens": 18,
            "cache_read_tokens": 2,
            "reasoning_tokens": 0,
        }
        # Mastra repeats the first step's completion start time on later steps: no negative time to first token
        assert call.result_payload.get("ttft_ms", 0) >= 0
    assert answer.result_payload["outputs"] == {"messages": [ANSWER]}


def test_mastra_tool_that_throws(mastra: dict[str, list[SpanRecord]]) -> None:
    trace = _by_trace(mastra, "invoke_agent Broken Agent", "Broken Agent")
    (tool,) = trace["execute_tool get_weather"]
    (agent,) = trace["invoke_agent Broken Agent"]
    assert tool.status == "failed"
    assert tool.payload["inputs"] == {"arguments": {"city": "Paris"}}
    assert tool.result_payload["error"]["message"] == "weather service unavailable"
    # the error goes back to the model as the tool's result; the run answers
    assert agent.status == "complete"
    assert agent.result_payload["outputs"] == {
        "messages": [{"role": "assistant", "content": "echo: weather service unavailable"}]
    }


def test_mastra_structured_output_recorded(mastra: dict[str, list[SpanRecord]]) -> None:
    (agent,) = [r for r in mastra["invoke_agent Chat Agent"] if "result" in r.result_payload["outputs"]]
    assert agent.payload["inputs"]["messages"][-1] == {"role": "user", "content": "Forecast for Paris as JSON"}
    assert agent.result_payload["outputs"]["result"] == {"city": "sunny", "forecast": "sunny"}
    _metadata_lacks(agent, "mastra.agent_run.output")


def test_mastra_model_generation_and_steps(mastra: dict[str, list[SpanRecord]]) -> None:
    trace = _by_trace(mastra, "invoke_agent Weather Agent", "Weather Agent")
    (generation,) = trace["model_generation gpt-tools"]
    first, second = trace["agent_step Weather Agent"]
    assert generation.payload["inputs"]["value"]["messages"][0] == SYSTEM
    assert generation.result_payload["outputs"]["value"]["text"] == ANSWER["content"]
    assert first.payload["inputs"] == {"value": [SYSTEM, QUESTION]}
    assert first.result_payload["outputs"]["value"]["toolCalls"][0]["toolName"] == "get_weather"
    assert second.result_payload["outputs"]["value"]["text"] == ANSWER["content"]
    for record in (generation, first, second):
        assert record.convention == "mastra"
        assert record.payload["token_usage"] is None  # the `chat` spans beneath carry the calls' usage


def test_mastra_workflow(mastra: dict[str, list[SpanRecord]]) -> None:
    (run,) = mastra["invoke_workflow city-workflow"]
    (pick,) = mastra["workflow_step pick-city"]
    (describe,) = mastra["workflow_step describe-city"]
    assert run.parent_span_id is None
    assert run.payload["inputs"] == {"value": {"country": "France"}}
    assert run.result_payload["outputs"] == {"value": {"description": "echo: Describe Paris"}}
    assert pick.payload["inputs"] == {"value": {"country": "France"}}
    assert pick.result_payload["outputs"] == {"value": {"city": "Paris"}}
    assert describe.result_payload["outputs"] == {"value": {"description": "echo: Describe Paris"}}
    # the step asked an agent: its run is a child of the step, with its prompt and answer
    (nested,) = [r for r in mastra["invoke_agent Chat Agent"] if r.parent_span_id == describe.span_id]
    assert nested.payload["inputs"]["messages"][-1] == {"role": "user", "content": "Describe Paris"}
    assert nested.result_payload["outputs"] == {"messages": [{"role": "assistant", "content": "echo: Describe Paris"}]}
    for record in (run, pick, describe):
        _metadata_lacks(
            record, "mastra.workflow_run.input", "mastra.workflow_step.input", "mastra.workflow_step.output"
        )


# ------------------------------------------------------- OpenAI Agents JS and LangChain.js through OpenInference
# These already landed typed before issue 25 (but LangChain.js's agent run, labelled CHAIN): regression fixtures.


def test_openai_agents_js_openinference() -> None:
    records = map_all(load_spans("openai_agents_openinference.json"))
    assert _types(records) == {
        "Agent workflow": {"otel:agent", "otel:chain"},  # the SDK's trace (AGENT) and its workflow span (CHAIN)
        "weather_agent": {"otel:agent"},
        "turn": {"otel:chain"},
        "generation": {"otel:llm"},
        "get_weather": {"otel:tool"},
    }
    (agent,) = records["weather_agent"]
    ask, answer = records["generation"]
    (tool,) = records["get_weather"]
    assert agent.payload["agent_name"] == "weather_agent"
    for call in (ask, answer):
        assert (call.payload["model"], call.payload["provider"]) == ("gpt-tools", "openai")
        assert call.payload["token_usage"]["prompt_tokens"] == 11
        assert call.payload["token_usage"]["completion_tokens"] == 7
    assert ask.payload["inputs"] == {"messages": [SYSTEM, QUESTION]}
    assert ask.result_payload["outputs"] == {
        "messages": [{"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}]
    }
    assert answer.payload["inputs"]["messages"][-1] == {
        "role": "tool",
        "content": "sunny in Paris",
        "tool_call_id": "call_weather_1",
    }
    assert tool.payload["tool_name"] == "get_weather"
    assert tool.payload["inputs"] == {"arguments": {"city": "Paris"}}
    assert tool.result_payload["outputs"] == {"result": "sunny in Paris"}


def test_langchain_js_create_agent_openinference() -> None:
    records = map_all(load_spans("langchain_openinference.json"))
    types = _types(records)
    assert types["weather_agent"] == {"otel:agent"}  # labelled CHAIN; its name is the run's lc_agent_name
    assert types["ChatOpenAI"] == {"otel:llm"}
    assert types["get_weather"] == {"otel:tool"}
    assert {name for name, kinds in types.items() if kinds == {"otel:chain"}} == {
        "__start__",
        "model_request",
        "tools",
        "RunnableLambda",
    }
    (agent,) = records["weather_agent"]
    assert agent.payload["agent_name"] == "weather_agent"
    assert agent.payload["inputs"] == {"messages": [QUESTION]}
    assert agent.result_payload["outputs"]["messages"][0]["content"] == "echo: sunny in Paris"
    for call in records["ChatOpenAI"]:
        assert call.payload["model"] == "gpt-tools"
        assert call.payload["tool_definitions"][0]["name"] == "get_weather"
        assert call.payload["token_usage"]["prompt_tokens"] == 11
    ask, _ = records["ChatOpenAI"]
    assert ask.result_payload["outputs"]["messages"][0]["tool_calls"][0]["arguments"] == {"city": "Paris"}
    (tool,) = records["get_weather"]
    assert (tool.payload["tool_name"], tool.payload["tool_call_id"]) == ("get_weather", "call_weather_1")
    assert tool.payload["inputs"] == {"arguments": "Paris"}  # LangChain.js hands the instrumentation the input text
    assert tool.result_payload["outputs"] == {"result": "sunny in Paris"}  # unwrapped from {"output": ToolMessage}


# ------------------------------------------------------------------------------------ token-total property


@pytest.mark.parametrize(
    "fixture",
    [
        "ai_sdk.json",
        "ai_sdk_7_legacy.json",
        "mastra.json",
        "openai_agents_openinference.json",
        "langchain_openinference.json",
    ],
)
def test_recorded_tokens_equal_what_the_model_served(fixture: str) -> None:
    records = [map_span(span) for span in load_spans(fixture)]
    for record in records:
        check_record(record)
    served = served_tokens(fixture)
    assert served["prompt_tokens"] > 0 and served["completion_tokens"] > 0
    assert tokens_counted(records) == served
