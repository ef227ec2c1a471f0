"""Classification priority (A0), the known mislabels, the other conventions' field chains, and the span filter
helper. Attribute shapes follow each convention's published attributes; spans are real SDK spans."""

from __future__ import annotations

import json

import pytest

from prefactor_otel.mapping import classify, map_span, schema_names
from tests.fixtures.semconv.checks import check_record, provider


def _span(name: str, attributes: dict[str, object]):  # type: ignore[no-untyped-def]
    tracer_provider, collector = provider()
    with tracer_provider.get_tracer("tests.semconv").start_as_current_span(name, attributes=attributes):  # type: ignore[arg-type]
        pass
    return collector.spans[0]


def _mapped(name: str, attributes: dict[str, object]):  # type: ignore[no-untyped-def]
    record = map_span(_span(name, attributes))
    check_record(record)
    return record


@pytest.mark.parametrize(
    ("attributes", "schema", "convention"),
    [
        # two conventions on one span: the higher one decides (pydantic-ai + OpenInference processor)
        ({"openinference.span.kind": "TOOL", "gen_ai.operation.name": "chat"}, "otel:tool", "openinference"),
        ({"langfuse.observation.type": "generation", "openinference.span.kind": "CHAIN"}, "otel:llm", "langfuse"),
        ({"mlflow.spanType": '"CHAT_MODEL"'}, "otel:llm", "mlflow"),  # MLflow JSON-encodes strings
        ({"mlflow.spanType": '"RETRIEVER"'}, "otel:retriever", "mlflow"),
        # LangSmith labels retriever runs gen_ai.operation.name=embeddings: langsmith.span.kind comes first
        ({"langsmith.span.kind": "retriever", "gen_ai.operation.name": "embeddings"}, "otel:retriever", "langsmith"),
        ({"langsmith.span.kind": "embedding", "gen_ai.operation.name": "embeddings"}, "otel:embedding", "langsmith"),
        ({"traceloop.span.kind": "tool"}, "otel:tool", "traceloop"),
        ({"traceloop.span.kind": "task"}, "otel:chain", "traceloop"),
        ({"gen_ai.operation.name": "embeddings"}, "otel:embedding", "gen_ai"),
        ({"gen_ai.operation.name": "retrieval"}, "otel:retriever", "gen_ai"),
        ({"gen_ai.operation.name": "invoke_workflow"}, "otel:chain", "gen_ai"),
        ({"gen_ai.operation.name": "create_agent"}, "otel:agent", "gen_ai"),
        ({"llm.request.type": "completion"}, "otel:llm", "traceloop"),
        ({"ai.operationId": "ai.toolCall"}, "otel:tool", "vercel_ai"),
        ({"gen_ai.tool.call.id": "c1"}, "otel:tool", "gen_ai"),  # pydantic-ai <= 1.x tool spans: no operation
        ({"llm.model_name": "gpt-4o"}, "otel:llm", "openinference"),
        ({"embedding.model_name": "e5"}, "otel:embedding", "openinference"),
        ({"openinference.span.kind": "UNKNOWN"}, "otel:span", "openinference"),
        ({"gen_ai.operation.name": "unknown"}, "otel:span", "gen_ai"),
        ({"http.request.method": "GET"}, "otel:span", None),
    ],
)
def test_priority_list(attributes: dict[str, object], schema: str, convention: str | None) -> None:
    result = classify(attributes)
    assert (result.schema_name, result.convention) == (schema, convention)
    assert result.schema_name in schema_names()


def test_traceloop_workflow_labelled_invoke_agent() -> None:
    base = {"traceloop.span.kind": "workflow", "gen_ai.operation.name": "invoke_agent"}
    assert classify({**base, "traceloop.entity.name": "RunnableSequence"}).schema_name == "otel:chain"
    assert classify({**base, "traceloop.entity.name": "support_agent"}).schema_name == "otel:agent"
    # a Traceloop task with a specific operation keeps that type
    task = {"traceloop.span.kind": "task", "gen_ai.operation.name": "vector_db_retrieve"}
    assert classify(task).schema_name == "otel:retriever"


def test_span_name_patterns_need_a_genai_attribute() -> None:
    assert classify({"gen_ai.provider.name": "x"}, "chat gpt-4o").schema_name == "otel:llm"
    assert classify({"traceloop.workflow.name": "w"}, "lookup.tool").schema_name == "otel:tool"
    assert classify({"gen_ai.system": "x"}, "agent run").schema_name == "otel:agent"
    # a plain span that happens to be called "chat ..." is not an LLM call
    assert classify({"http.route": "/chat"}, "chat rooms").schema_name == "otel:span"


def test_langsmith_run_shapes() -> None:
    retriever = _mapped(
        "search_docs",
        {
            "langsmith.span.kind": "retriever",
            "gen_ai.operation.name": "embeddings",
            "gen_ai.prompt": json.dumps({"query": "refund policy"}),
            "gen_ai.completion": json.dumps(
                {"documents": [{"page_content": "30 days", "metadata": {"source": "faq"}, "type": "Document"}]}
            ),
            "langsmith.trace.session_id": "sess-1",
        },
    )
    assert retriever.schema_name == "otel:retriever"
    assert retriever.payload["inputs"]["query"] == "refund policy"
    assert retriever.result_payload["outputs"]["documents"] == [
        {"id": None, "content": "30 days", "metadata": {"source": "faq"}}
    ]
    assert retriever.payload["session_id"] == "sess-1"
    assert retriever.payload["metadata"]["gen_ai.operation.name"] == "embeddings"  # the mislabel stays visible

    llm = _mapped(
        "ChatOpenAI",
        {
            "langsmith.span.kind": "llm",
            "langsmith.metadata.ls_model_name": "gpt-4o-mini",
            "langsmith.metadata.ls_provider": "openai",
            "gen_ai.usage.input_tokens": 5,
            "gen_ai.usage.output_tokens": 2,
            "gen_ai.usage.total_tokens": 7,
        },
    )
    assert (llm.payload["model"], llm.payload["provider"]) == ("gpt-4o-mini", "openai")
    assert llm.payload["token_usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def test_mlflow_and_langfuse_shapes() -> None:
    mlflow = _mapped(
        "ChatModel",
        {
            "mlflow.spanType": '"LLM"',
            "mlflow.spanInputs": json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
            "mlflow.spanOutputs": json.dumps({"choices": [{"message": {"role": "assistant", "content": "hello"}}]}),
            "mlflow.chat.tokenUsage": json.dumps({"input_tokens": 3, "output_tokens": 1, "total_tokens": 4}),
            "mlflow.llm.model": '"gpt-4o"',
        },
    )
    assert mlflow.schema_name == "otel:llm" and mlflow.payload["metadata"]["convention"] == "mlflow"
    assert mlflow.payload["inputs"]["messages"] == [{"role": "user", "content": "hi"}]
    assert mlflow.result_payload["outputs"]["messages"] == [{"role": "assistant", "content": "hello"}]
    assert mlflow.payload["token_usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}

    langfuse = _mapped(
        "generate",
        {
            "langfuse.observation.type": "generation",
            "langfuse.observation.model.name": "claude-x",
            "langfuse.observation.model.parameters": json.dumps({"temperature": 0.1}),
            "langfuse.observation.input": json.dumps([{"role": "user", "content": "q"}]),
            "langfuse.observation.output": json.dumps({"role": "assistant", "content": "a"}),
            "langfuse.observation.usage_details": json.dumps({"input": 10, "output": 4, "total": 14}),
            "user.id": "u-7",
        },
    )
    assert langfuse.payload["model"] == "claude-x" and langfuse.payload["params"] == {"temperature": 0.1}
    assert langfuse.payload["inputs"]["messages"] == [{"role": "user", "content": "q"}]
    assert langfuse.result_payload["outputs"]["messages"] == [{"role": "assistant", "content": "a"}]
    assert langfuse.payload["token_usage"] == {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}
    assert langfuse.payload["user_id"] == "u-7"


def test_json_in_string_values_are_parsed_defensively() -> None:
    record = _mapped(
        "execute_tool t",
        {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": "t",
            "gen_ai.tool.call.arguments": "{'city': 'Paris'}",  # a Python repr, not JSON: kept raw
            "gen_ai.tool.call.result": '{"truncated": ',
        },
    )
    assert record.payload["inputs"]["arguments"] == "{'city': 'Paris'}"
    assert record.result_payload["outputs"]["result"] == '{"truncated": '


def test_odd_shapes_never_lose_the_span() -> None:
    import random

    rng = random.Random(7)
    keys = [
        "gen_ai.operation.name",
        "gen_ai.input.messages",
        "gen_ai.output.messages",
        "gen_ai.tool.call.arguments",
        "gen_ai.tool.definitions",
        "llm.input_messages.0.message.content",
        "llm.input_messages.x.message.role",
        "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments",
        "retrieval.documents.0.document.metadata",
        "embedding.embeddings.0.embedding.vector",
        "input.value",
        "output.value",
        "traceloop.entity.input",
        "openinference.span.kind",
        "langsmith.span.kind",
        "mlflow.spanType",
        "gen_ai.usage.input_tokens",
        "pydantic_ai.all_messages",
        "final_result",
    ]
    values: list[object] = [
        "chat",
        "LLM",
        "RETRIEVER",
        "execute_tool",
        '[{"role": "user", "parts": "not a list"}]',
        '[{"role": 3, "parts": [{"type": "tool_call", "arguments": "[1, 2"}]}]',
        '{"messages": [[{"lc": 1, "type": "constructor", "id": 5, "kwargs": []}]]}',
        '[null, 1, "x", {"content": [1, {"type": "text"}]}]',
        '{"documents": [1, null, {"page_content": 2}]}',
        '"\\"LLM\\""',
        "{not json",
        "NaN",
        12,
        -1.5,
        True,
        ("a", "b"),
        (1.5, 2.5),
        "",
    ]
    for _ in range(300):
        attributes = {key: rng.choice(values) for key in rng.sample(keys, rng.randint(1, 8))}
        record = map_span(_span("odd " + rng.choice(["chat x", "execute_tool y", "span"]), attributes))
        check_record(record)  # strict JSON and valid for its schema, whatever came in
