"""Traceloop / OpenLLMetry: the 0.62 OpenAI instrumentation live against a fake server on 127.0.0.1, and recorded
spans of the legacy flat format (0.47: `gen_ai.prompt.N.*`, `llm.request.type`) and of the 0.62 LangChain
instrumentation (which labels every run's root `invoke_agent`), replayed through the mapping."""

from __future__ import annotations

import json

import opentelemetry.instrumentation.openai  # noqa: F401  (the test extra installs it; missing = fail, not skip)
from opentelemetry.instrumentation.openai import OpenAIInstrumentor

from prefactor_otel.devserver import DevServer
from tests.fixtures.semconv.checks import export_to_devserver, fake_openai_workload, instrumented, map_all, provider
from tests.fixtures.semconv.fake_openai import SECRET_IN_PROMPT
from tests.fixtures.semconv.replay import load
from tests.spans import exporter_for


def test_traceloop_0_62_openai_live() -> None:
    tracer_provider, collector = provider()
    instrumented(OpenAIInstrumentor(), fake_openai_workload)(tracer_provider)
    records = map_all(collector.spans)
    ask, answer, streamed, failed = records["openai.chat"]
    (embedding,) = records["openai.embeddings"]
    assert ask.schema_name == "otel:llm" and embedding.schema_name == "otel:embedding"
    assert ask.payload["params"] == {"temperature": 0.2, "max_tokens": 50, "stream": False}
    assert ask.payload["tool_definitions"] == [
        {
            "type": "function",
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        }
    ]
    assert ask.result_payload["outputs"]["messages"][0]["tool_calls"][0]["id"] == "call_weather_1"
    assert ask.payload["token_usage"] == {
        "prompt_tokens": 11,
        "completion_tokens": 7,
        "total_tokens": 18,
        "cache_read_tokens": 2,
    }
    assert answer.payload["inputs"]["messages"][-1]["tool_call_id"] == "call_weather_1"
    # streaming: the first chunk event gives the time to first token
    assert streamed.payload["params"]["stream"] is True and streamed.result_payload["ttft_ms"] >= 0
    # embeddings: Traceloop sends the inputs as user text messages; no completion count is invented
    assert embedding.payload["inputs"]["texts"] == ["alpha", "beta"]
    assert embedding.payload["token_usage"] == {"prompt_tokens": 8, "total_tokens": 8, "cache_read_tokens": 0}
    assert failed.status == "failed" and failed.payload["error"]["error_type"] == "openai.InternalServerError"
    assert SECRET_IN_PROMPT not in json.dumps(ask.payload)


def test_traceloop_0_47_legacy_flat_format_replayed() -> None:
    records = map_all(load("traceloop_0_47_openai.json"))
    ask, answer, streamed, failed = records["openai.chat"]
    (embedding,) = records["openai.embeddings"]
    # no gen_ai.operation.name in this generation: llm.request.type decides
    assert ask.schema_name == "otel:llm" and ask.payload["metadata"]["convention"] == "traceloop"
    assert ask.payload["metadata"]["prefactor.classified_by"] == "llm.request.type"
    assert embedding.schema_name == "otel:embedding"
    # gen_ai.prompt.N.* / gen_ai.completion.N.* become the shared message shape
    assert ask.payload["inputs"]["messages"][0] == {"role": "system", "content": "You are a weather bot."}
    assert "[REDACTED:api_key]" in ask.payload["inputs"]["messages"][1]["content"]
    assert ask.result_payload["outputs"]["messages"] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_weather_1", "name": "get_weather", "arguments": {"city": "Paris"}}],
            "finish_reason": "tool_calls",
        }
    ]
    assert answer.payload["inputs"]["messages"][1]["tool_calls"][0]["name"] == "get_weather"
    assert answer.payload["inputs"]["messages"][2] == {
        "role": "tool",
        "content": "sunny, 21 C",
        "tool_call_id": "call_weather_1",
    }
    # llm.request.functions.N.* are the tool definitions
    assert ask.payload["tool_definitions"][0]["name"] == "get_weather"
    # the old usage names, into Prefactor's
    assert ask.payload["token_usage"] == {
        "prompt_tokens": 11,
        "completion_tokens": 7,
        "total_tokens": 18,
        "cache_read_tokens": 2,
        "reasoning_tokens": 0,
    }
    assert not any(key.startswith(("gen_ai.prompt.", "gen_ai.completion.")) for key in ask.payload["metadata"])
    assert streamed.result_payload["ttft_ms"] >= 0
    assert embedding.payload["inputs"]["texts"] == ["alpha", "beta"]
    assert failed.status == "failed" and failed.payload["error"]["error_type"] == "openai.InternalServerError"


def test_traceloop_0_62_langchain_replayed_root_mislabel() -> None:
    records = map_all(load("traceloop_0_62_langchain.json"))
    # Both roots say gen_ai.operation.name=invoke_agent. The plain prompt|model|parser chain is a chain; the run
    # whose own name says agent is an agent.
    (chain_root,) = records["RunnableSequence.workflow"]
    (agent_root,) = records["weather_agent.workflow"]
    assert chain_root.schema_name == "otel:chain" and chain_root.payload["operation"] == "workflow"
    assert chain_root.payload["metadata"]["gen_ai.operation.name"] == "invoke_agent"  # kept, not trusted
    assert agent_root.schema_name == "otel:agent" and agent_root.payload["agent_name"] == "weather_agent"
    assert agent_root.payload["inputs"]["value"] == "Weather in Paris?"
    assert agent_root.result_payload["outputs"]["value"] == "It is sunny in Paris."

    # tasks stay chains, the retriever task is a retriever, the model calls are LLM calls
    assert {r.schema_name for r in records["execute_task ChatPromptTemplate"]} == {"otel:chain"}
    (retriever,) = records["vector_db_retrieve KnowledgeBase"]
    assert retriever.schema_name == "otel:retriever"
    assert retriever.payload["inputs"]["query"] == "paris"
    assert [d["content"] for d in retriever.result_payload["outputs"]["documents"]] == [
        "Paris weather report for paris",
        "Paris is the capital of France",
    ]
    (llm,) = records["FakeListChatModel.chat"]
    assert llm.schema_name == "otel:llm"
    assert "model" not in llm.payload  # Traceloop's "unknown" placeholder is not a model
    assert llm.payload["inputs"]["messages"][0] == {"role": "system", "content": "You are a geography bot."}

    # the tool: the whole LangChain callback payload is unwrapped into arguments, call id and result
    (tool,) = records["execute_tool get_weather"]
    assert tool.schema_name == "otel:tool"
    assert tool.payload["inputs"]["arguments"] == {"city": "Paris"}
    assert tool.payload["tool_call_id"] == "call_1"
    assert tool.result_payload["outputs"]["result"] == "sunny in Paris"
    # duplicates (traceloop.entity.input == gen_ai.tool.call.arguments) are consumed with the value
    assert "traceloop.entity.input" not in tool.payload["metadata"]


def test_traceloop_end_to_end_through_the_exporter() -> None:
    instrumentor = OpenAIInstrumentor()

    stored, _ = export_to_devserver(instrumented(instrumentor, fake_openai_workload))
    assert sorted(s["schema_name"] for s in stored) == ["otel:embedding"] + ["otel:llm"] * 4


def test_replayed_legacy_spans_end_to_end() -> None:
    spans = load("traceloop_0_47_openai.json")
    with DevServer() as server:
        exporter = exporter_for(
            server,
            finish_grace_seconds=0,
            spool=False,
        )
        exporter.export(spans)
        exporter.shutdown()
        stored = server.spans()
    assert sorted(s["schema_name"] for s in stored) == ["otel:embedding"] + ["otel:llm"] * 4
    assert all(SECRET_IN_PROMPT not in json.dumps(s) for s in stored)
