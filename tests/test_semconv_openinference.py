"""OpenInference instrumentations: OpenAI (fake server on 127.0.0.1) and LangChain (fake chat models, a retriever,
a tool, a chain and an agent-named runnable)."""

from __future__ import annotations

from collections.abc import Iterator

import langchain_core  # noqa: F401  (the test extra installs it; missing = fail, not skip)
import openinference.instrumentation.langchain
import openinference.instrumentation.openai  # noqa: F401  (the test extra installs it; missing = fail, not skip)
import pytest
from openinference.instrumentation.langchain import LangChainInstrumentor
from openinference.instrumentation.openai import OpenAIInstrumentor
from opentelemetry.sdk.trace import ReadableSpan

from tests.fixtures.semconv.checks import export_to_devserver, fake_openai_workload, instrumented, map_all, provider
from tests.fixtures.semconv.fake_openai import SECRET_IN_PROMPT
from tests.fixtures.semconv.langchain_app import run_langchain_app


@pytest.fixture
def openai_spans() -> Iterator[list[ReadableSpan]]:
    tracer_provider, collector = provider()
    instrumented(OpenAIInstrumentor(), fake_openai_workload)(tracer_provider)
    yield collector.spans


@pytest.fixture
def langchain_spans() -> Iterator[list[ReadableSpan]]:
    tracer_provider, collector = provider()
    instrumented(LangChainInstrumentor(), run_langchain_app)(tracer_provider)
    yield collector.spans


def test_openai_llm_and_embedding_spans(openai_spans: list[ReadableSpan]) -> None:
    records = map_all(openai_spans)
    ask, answer, streamed, failed = records["ChatCompletion"]
    (embedding,) = records["CreateEmbeddings"]
    assert {r.schema_name for r in (ask, answer, streamed, failed)} == {"otel:llm"}
    assert embedding.schema_name == "otel:embedding"
    assert ask.payload["metadata"]["convention"] == "openinference"

    # flattened llm.input_messages.* / llm.output_messages.* become the shared message shape
    assert ask.payload["inputs"]["messages"][0] == {"role": "system", "content": "You are a weather bot."}
    (reply,) = ask.result_payload["outputs"]["messages"]
    assert reply["tool_calls"] == [{"id": "call_weather_1", "name": "get_weather", "arguments": {"city": "Paris"}}]
    assert answer.payload["inputs"]["messages"][-1] == {
        "role": "tool",
        "content": "sunny, 21 C",
        "tool_call_id": "call_weather_1",
    }
    assert ask.payload["params"] == {"max_tokens": 50, "temperature": 0.2}
    assert ask.payload["tool_definitions"][0]["name"] == "get_weather"
    assert ask.result_payload["finish_reasons"] == ["tool_calls"]
    # llm.model_name is the model the response named
    assert ask.payload["model"] == ask.result_payload["response_model"] == "gpt-tools-2026-01-01"
    assert ask.payload["token_usage"] == {
        "prompt_tokens": 11,
        "completion_tokens": 7,
        "total_tokens": 18,
        "cache_read_tokens": 2,
    }
    # the raw request / response copies are not repeated once the structured attributes are mapped
    assert not {"input.value", "output.value", "llm.input_messages.0.message.role"} & set(ask.payload["metadata"])

    # streaming: time to first token from the "First Token Stream Event"
    assert streamed.result_payload["ttft_ms"] >= 0
    assert streamed.result_payload["outputs"]["messages"][0]["content"] == "echo: stream please"

    # embeddings: texts in, dimension out, vectors counted but not sent
    assert embedding.payload["inputs"]["texts"] == ["alpha", "beta"]
    assert embedding.result_payload["dimension_count"] == 3 and embedding.result_payload["vector_count"] == 2
    assert "embedding.embeddings.0.embedding.vector" not in embedding.payload["metadata"]

    # the failed call: its error, and the model from the request (the response never came)
    assert failed.status == "failed" and failed.payload["model"] == "fail-500"
    assert failed.payload["error"]["error_type"] == "openai.InternalServerError"
    assert "Traceback" in failed.payload["error"]["stacktrace"]

    assert SECRET_IN_PROMPT not in str([r.payload for rs in records.values() for r in rs])


def test_langchain_llm_tool_retriever_agent_and_chain_spans(langchain_spans: list[ReadableSpan]) -> None:
    records = map_all(langchain_spans)
    schemas = {name: {r.schema_name for r in recs} for name, recs in records.items()}
    assert schemas == {
        "ChatPromptTemplate": {"otel:chain"},
        "FakeListChatModel": {"otel:llm"},
        "StrOutputParser": {"otel:chain"},
        "RunnableSequence": {"otel:chain"},
        "KnowledgeBase": {"otel:retriever"},
        "GenericFakeChatModel": {"otel:llm"},
        "get_weather": {"otel:tool"},
        "weather_agent": {"otel:agent"},
    }
    (chain,) = records["RunnableSequence"]
    assert chain.payload["inputs"]["value"] == "Where is Paris?"
    assert chain.result_payload["outputs"]["value"] == "Paris is in France."
    (llm,) = records["FakeListChatModel"]
    assert llm.parent_span_id == chain.span_id
    assert llm.payload["inputs"]["messages"] == [
        {"role": "system", "content": "You are a geography bot."},
        {"role": "user", "content": "Where is Paris?"},
    ]
    assert llm.result_payload["outputs"]["messages"] == [{"role": "assistant", "content": "Paris is in France."}]

    (retriever,) = records["KnowledgeBase"]
    assert retriever.payload["inputs"]["query"] == "paris"
    documents = retriever.result_payload["outputs"]["documents"]
    assert [d["content"] for d in documents] == ["Paris weather report for paris", "Paris is the capital of France"]
    assert documents[0]["metadata"] == {"source": "kb"}

    (agent,) = records["weather_agent"]
    (tool,) = records["get_weather"]
    asking, answering = records["GenericFakeChatModel"]
    for child in (tool, asking, answering):
        assert child.parent_span_id == agent.span_id
    assert agent.payload["agent_name"] == "weather_agent"
    assert agent.result_payload["outputs"]["value"] == "It is sunny in Paris."
    assert asking.result_payload["outputs"]["messages"][0]["tool_calls"][0]["id"] == "call_1"
    # the tool span: name, description, arguments, result, and the call id found in the ToolMessage output
    assert tool.payload["tool_name"] == "get_weather"
    assert tool.payload["tool_description"] == "Current weather for a city."
    assert tool.payload["tool_call_id"] == "call_1"
    assert tool.payload["inputs"]["arguments"] == "Paris"
    assert tool.result_payload["outputs"]["result"] == "sunny in Paris"


def test_openinference_langchain_end_to_end_through_the_exporter() -> None:
    instrumentor = LangChainInstrumentor()

    stored, _ = export_to_devserver(instrumented(instrumentor, run_langchain_app))
    assert {s["schema_name"] for s in stored} == {
        "otel:chain",
        "otel:llm",
        "otel:retriever",
        "otel:tool",
        "otel:agent",
    }
    retriever = next(s for s in stored if s["schema_name"] == "otel:retriever")
    assert len(retriever["result_payload"]["outputs"]["documents"]) == 2
