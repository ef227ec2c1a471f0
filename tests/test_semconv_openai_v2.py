"""opentelemetry-instrumentation-openai-v2 and the real `openai` client against a fake OpenAI server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import openai  # noqa: F401  (the test extra installs it; missing = fail, not skip)
import opentelemetry.instrumentation.openai_v2  # noqa: F401  (the test extra installs it; missing = fail, not skip)
import pytest
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.sdk.trace import TracerProvider

from tests.fixtures.semconv.checks import export_to_devserver, fake_openai_workload, instrumented, map_all, provider
from tests.fixtures.semconv.fake_openai import SECRET_IN_PROMPT, FakeOpenAI, openai_workload


@pytest.fixture
def instrument(monkeypatch: pytest.MonkeyPatch) -> Iterator[TracerProvider]:
    # Content on spans is opt-in in the official instrumentation.
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "SPAN_ONLY")
    tracer_provider, collector = provider()
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider)
    tracer_provider.collector = collector  # type: ignore[attr-defined]
    try:
        yield tracer_provider
    finally:
        instrumentor.uninstrument()


def test_chat_tools_streaming_embeddings_and_a_failure(instrument: TracerProvider) -> None:
    with FakeOpenAI() as fake:
        result = openai_workload(fake.base_url)
    assert result["failure"] is not None
    records = map_all(instrument.collector.spans)  # type: ignore[attr-defined]
    ask, answer = records["chat gpt-tools"]
    (streamed,) = records["chat gpt-4o"]
    (embedding,) = records["embeddings text-embedding-3-small"]
    (failed,) = records["chat fail-500"]

    assert {r.schema_name for r in (ask, answer, streamed, failed)} == {"otel:llm"}
    assert embedding.schema_name == "otel:embedding"

    # request: model, provider, parameters, messages (the system prompt first)
    assert ask.payload["model"] == "gpt-tools" and ask.payload["provider"] == "openai"
    assert ask.payload["params"] == {"temperature": 0.2, "max_tokens": 50}
    messages = ask.payload["inputs"]["messages"]
    assert messages[0] == {"role": "system", "content": "You are a weather bot."}
    assert messages[1]["role"] == "user" and messages[1]["content"].startswith("Weather in Paris?")
    # response: the tool call, finish reason, ids, usage
    (reply,) = ask.result_payload["outputs"]["messages"]
    assert reply["tool_calls"] == [{"id": "call_weather_1", "name": "get_weather", "arguments": {"city": "Paris"}}]
    assert ask.result_payload["finish_reasons"] == ["tool_calls"]
    assert ask.result_payload["response_model"] == "gpt-tools-2026-01-01"
    assert ask.result_payload["response_id"] == "chatcmpl-fake-1"
    assert ask.payload["token_usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    # the follow-up carries the tool result, linked to the call
    tool_message = answer.payload["inputs"]["messages"][-1]
    assert tool_message == {"role": "tool", "content": "sunny, 21 C", "tool_call_id": "call_weather_1"}
    assert answer.result_payload["outputs"]["messages"][0]["content"] == "echo: sunny, 21 C"

    # streaming: the assembled answer and the usage of the final chunk
    assert streamed.result_payload["outputs"]["messages"][0]["content"] == "echo: stream please"
    assert streamed.payload["token_usage"]["total_tokens"] == 13

    # embeddings: model, usage, dimension
    assert embedding.payload["model"] == "text-embedding-3-small"
    # an embedding has no completion tokens: none invented (no completion_tokens: 0, no total from a guess)
    assert embedding.payload["token_usage"] == {"prompt_tokens": 8}
    assert embedding.result_payload["dimension_count"] == 3

    # HTTP 500: a failed span with its error
    assert failed.status == "failed"
    assert failed.payload["error"]["error_type"] == "openai.InternalServerError"
    assert "fake upstream exploded" in failed.payload["error"]["message"]
    assert failed.result_payload["error"] == failed.payload["error"]

    # the secret in the prompt was redacted before anything left the mapping
    assert SECRET_IN_PROMPT not in str(ask.payload)
    assert "[REDACTED:api_key]" in messages[1]["content"]
    assert {"path": 'attributes["gen_ai.input.messages"]', "rule": "api_key", "count": 1} in ask.payload["metadata"][
        "prefactor.redactions"
    ]


def test_openai_v2_end_to_end_through_the_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "SPAN_ONLY")
    instrumentor = OpenAIInstrumentor()

    stored, _ = export_to_devserver(instrumented(instrumentor, fake_openai_workload))
    schemas = sorted(s["schema_name"] for s in stored)
    assert schemas == ["otel:embedding"] + ["otel:llm"] * 4
    failed = [s for s in stored if s["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["payload"]["error"]["error_type"] == "openai.InternalServerError"
    assert all(SECRET_IN_PROMPT not in str(s) for s in stored)
