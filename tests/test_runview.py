"""run_views over runs a real exporter sent to a local server: model, tokens, totals, tools, previews, errors, and
spans in the order they ran; `GET /_dev/runs`; and snapshots in odd shapes."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from prefactor_otel.devserver import DevServer, run_views
from prefactor_otel.devserver.runview import walk
from tests.spans import exporter_for, make_provider

MS = 1_000_000  # nanoseconds
T0 = 1_767_225_600_000 * MS  # 2026-01-01T00:00:00Z, on a millisecond


def _chat(tracer: trace.Tracer, parent: trace.Span, start: int, end: int, text: str, usage: tuple[int, int]) -> None:
    span = tracer.start_span(
        "chat gpt-4o",
        context=trace.set_span_in_context(parent),
        start_time=start,
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.response.model": "gpt-4o-2024-08-06",
            "gen_ai.usage.input_tokens": usage[0],
            "gen_ai.usage.output_tokens": usage[1],
            "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [{"type": "text", "content": text}]}]),
            "gen_ai.output.messages": json.dumps(
                [{"role": "assistant", "parts": [{"type": "text", "content": f"answer to {text}"}]}]
            ),
        },
    )
    span.end(end_time=start if end < start else end)


def _tool(tracer: trace.Tracer, parent: trace.Span, start: int, end: int, city: str, fail: bool = False) -> None:
    span = tracer.start_span(
        "execute_tool get_weather",
        context=trace.set_span_in_context(parent),
        start_time=start,
        attributes={
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": "get_weather",
            "gen_ai.tool.call.arguments": json.dumps({"city": city}),
        },
    )
    if fail:
        span.record_exception(LookupError(f"no station in {city}"), timestamp=end)
        span.set_status(Status(StatusCode.ERROR, f"no station in {city}"))
    else:
        span.set_attribute("gen_ai.tool.call.result", f"sunny in {city}")
    span.end(end_time=end)


def _agent_run(tracer: trace.Tracer, start: int, city: str, *, fail: bool = False) -> None:
    """invoke_agent -> chat (10 ms), get_weather (0.4 ms, in the millisecond the chat ended), chat (9.5 ms).

    The agent span repeats its model calls' usage (as OTel GenAI invoke_agent spans do): 30+50 in, 5+7 out."""
    root = tracer.start_span(
        "invoke_agent weather",
        start_time=start,
        attributes={
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "weather",
            "gen_ai.usage.input_tokens": 80,
            "gen_ai.usage.output_tokens": 12,
        },
    )
    _chat(tracer, root, start, start + 10 * MS, f"weather in {city}?", (30, 5))
    _tool(tracer, root, start + 10 * MS, start + 10 * MS + 400_000, city, fail=fail)
    _chat(tracer, root, start + 10 * MS + 500_000, start + 20 * MS, "  and\n\ttomorrow " + "?" * 200, (50, 7))
    root.end(end_time=start + 21 * MS)


def _snapshot_of_runs(runs: int, *, fail_last: bool = False) -> dict[str, Any]:
    provider, collector = make_provider("weather", "2.0")
    tracer = provider.get_tracer("tests.runview")
    for n in range(runs):
        _agent_run(tracer, T0 + n * 100 * MS, f"city{n}", fail=fail_last and n == runs - 1)
    with DevServer() as srv:
        exporter = exporter_for(srv)
        exporter.export(collector.spans)
        exporter.shutdown()
        return srv.snapshot()


def test_run_views_of_real_exporter_runs() -> None:
    # Eight runs: a tool between two chats that start in the same millisecond; ordering ties by id (random past
    # its time prefix) put the tool last in about half of them, so all eight pass only if the order is right.
    views = run_views(_snapshot_of_runs(8, fail_last=True))
    assert len(views) == 8
    assert [v["started_at"] for v in views] == sorted((v["started_at"] for v in views), reverse=True)  # newest first
    for view in views:
        (root,) = view["spans"]
        assert [(c["type"], c["name"]) for c in root["children"]] == [
            ("otel:llm", "chat gpt-4o"),
            ("otel:tool", "execute_tool get_weather"),
            ("otel:llm", "chat gpt-4o"),
        ]
        assert view["agent"] == "weather@2.0" and view["name"] == "invoke_agent weather"
        assert view["duration_ms"] == 21
        # The agent span's own usage repeats its calls': shown on it, not added to the totals again.
        assert root["tokens"] == {"input": 80, "output": 12, "total": 92, "aggregated": True}
        totals = view["totals"]
        assert (totals["input_tokens"], totals["output_tokens"], totals["total_tokens"]) == (80, 12, 92)
        assert totals["spans"] == 4 and totals["models"] == ["gpt-4o"] and totals["tools"] == ["get_weather"]

    first_chat, tool, second_chat = views[-1]["spans"][0]["children"]
    assert first_chat["model"] == "gpt-4o" and first_chat["tool"] is None
    assert first_chat["tokens"] == {"input": 30, "output": 5, "total": 35, "aggregated": False}
    assert first_chat["input_preview"] == "user: weather in city0?"
    assert first_chat["output_preview"] == "assistant: answer to weather in city0?"
    assert first_chat["duration_ms"] == 10 and first_chat["error"] is None and first_chat["orphan"] is False
    assert tool["tool"] == "get_weather" and tool["model"] is None and tool["tokens"] is None
    assert tool["input_preview"] == '{"city":"city0"}' and tool["output_preview"] == "sunny in city0"
    # A long, multi-line input: one line, whitespace collapsed, cut with an ellipsis.
    preview = second_chat["input_preview"]
    assert preview.startswith("user: and tomorrow ???") and preview.endswith("…") and len(preview) == 80

    failed = views[0]
    assert failed["status"] == "complete" and failed["totals"]["errors"] == 1  # the agent handled it
    failed_tool = failed["spans"][0]["children"][1]
    assert failed_tool["status"] == "failed" and failed_tool["output_preview"] is None
    assert failed_tool["error"] == {"type": "LookupError", "message": "no station in city7"}
    json.dumps(views)  # JSON-ready


def test_dev_runs_endpoint_answers_the_views_with_the_snapshots_auth() -> None:
    provider, collector = make_provider("weather", "2.0")
    _agent_run(provider.get_tracer("tests.runview"), T0, "Oslo")
    with DevServer() as srv:
        exporter = exporter_for(srv)
        exporter.export(collector.spans)
        exporter.shutdown()
        assert httpx.get(srv.url + "/_dev/runs").status_code == 401
        answer = httpx.get(srv.url + "/_dev/runs", headers={"Authorization": f"Bearer {srv.token}"})
        assert answer.status_code == 200
        assert answer.json() == {"runs": run_views(srv.snapshot())}
        (run,) = answer.json()["runs"]
        assert run["totals"]["tools"] == ["get_weather"] and run["totals"]["input_tokens"] == 80


def _span(span_id: str, start: str | None, **fields: Any) -> dict[str, Any]:
    return {"id": span_id, "agent_instance_id": "run-1", "started_at": start, "status": "complete", **fields}


def test_run_views_tolerate_odd_snapshots() -> None:
    snapshot: dict[str, Any] = {
        "instances": [{"id": "run-1", "status": "active"}, "not a run", {"id": "run-2"}],
        "agent_versions": [None, {"id": "v", "name": None}],
        "spans": [
            _span("a", "not a time", payload="text", result_payload=[1], schema_name=7),
            _span("b", None, payload={"token_usage": {"prompt_tokens": -1, "completion_tokens": True}}),
            _span("c", None, payload={"inputs": {"messages": []}, "error": {"message": {"deep": [1]}}}),
            _span("d", "2024-01-01T00:00:00Z", parent_span_id="e"),
            _span("e", "2024-01-01T00:00:01Z", parent_span_id="d"),
            _span("s", "2024-01-01T00:00:02Z", agent_instance_id="run-gone"),
            "not a span",
        ],
    }
    views = {v["id"]: v for v in run_views(snapshot)}
    assert set(views) == {"run-1", "run-2", "run-gone"}
    assert views["run-gone"]["known"] is False and views["run-gone"]["status"] is None
    run = views["run-1"]
    spans = {v["id"]: v for v, _ in walk(run["spans"])}
    assert set(spans) == {"a", "b", "c", "d", "e"}  # each once, the cycle broken at its earliest span
    assert spans["d"]["orphan"] is True and spans["e"] in spans["d"]["children"]
    assert spans["a"]["type"] is None and spans["a"]["name"] is None and spans["a"]["duration_ms"] is None
    assert spans["b"]["tokens"] is None  # neither count is a count
    assert spans["c"]["error"] == {"type": None, "message": '{"deep":[1]}'} and spans["c"]["input_preview"]
    assert run["totals"]["errors"] == 1 and run["agent"] is None


def test_run_views_of_very_deep_runs_stay_json_encodable() -> None:
    depth = 3000  # deeper than the recursion limit of the JSON encoder
    spans = [_span(f"s{i}", "2024-01-01T00:00:00Z", parent_span_id=f"s{i - 1}" if i else None) for i in range(depth)]
    (run,) = run_views({"instances": [{"id": "run-1", "status": "active"}], "spans": spans})
    assert run["totals"]["spans"] == depth
    assert [v["id"] for v, _ in walk(run["spans"])] == [f"s{i}" for i in range(depth)]
    json.dumps(run)


def test_run_views_of_a_real_openai_instrumentation(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

    from tests.fixtures.semconv.fake_openai import FakeOpenAI, openai_workload

    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "SPAN_ONLY")
    provider, collector = make_provider("weather", "2.0")
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        with FakeOpenAI() as fake, provider.get_tracer("tests.runview").start_as_current_span("weather run"):
            openai_workload(fake.base_url)
    finally:
        instrumentor.uninstrument()
    with DevServer() as srv:
        exporter = exporter_for(srv)
        exporter.export(collector.spans)
        exporter.shutdown()
        (run,) = run_views(srv.snapshot())

    (root,) = run["spans"]
    calls = root["children"]
    assert [c["name"] for c in calls] == [
        "chat gpt-tools",
        "chat gpt-tools",
        "chat gpt-4o",
        "embeddings text-embedding-3-small",
        "chat fail-500",
    ]
    ask, answer, _, embedding, failed = calls
    assert ask["model"] == "gpt-tools" and ask["tokens"] == {"input": 11, "output": 7, "total": 18, "aggregated": False}
    assert ask["output_preview"] == 'assistant: → get_weather({"city":"Paris"})'
    assert answer["input_preview"] == "tool: sunny, 21 C"
    assert embedding["type"] == "otel:embedding" and embedding["model"] == "text-embedding-3-small"
    assert failed["status"] == "failed" and failed["input_preview"] == "user: fail please"
    assert failed["error"] == {
        "type": "openai.InternalServerError",
        "message": "Error code: 500 - fake upstream exploded",
    }
    # Previews come from what was sent: after redaction.
    assert ask["input_preview"] == "user: Weather in Paris? (my key is [REDACTED:api_key])"
    totals = run["totals"]
    assert totals["models"] == ["gpt-tools", "gpt-4o", "text-embedding-3-small", "fail-500"]
    assert totals["errors"] == 1 and totals["tools"] == []
    assert totals["input_tokens"] == sum((c["tokens"] or {}).get("input") or 0 for c in calls)


def test_in_a_terminated_run_only_the_spans_the_termination_closed_are_terminated_not_errors() -> None:
    stopped = "2024-01-01T00:00:10.000000Z"
    instance = {"id": "run-1", "status": "terminated", "finished_at": stopped, "termination_reason": "seen enough"}
    spans = [
        _span("root", "2024-01-01T00:00:00Z", status="failed", finished_at=stopped),  # closed by the termination
        _span("wait", "2024-01-01T00:00:09Z", parent_span_id="root", status="cancelled", finished_at=stopped),
        _span(  # failed on its own, before the termination: an error
            "tool",
            "2024-01-01T00:00:01Z",
            parent_span_id="root",
            status="failed",
            finished_at="2024-01-01T00:00:02Z",
            result_payload={"error": {"error_type": "ValueError", "message": "bad"}},
        ),
        _span(  # the agent stopping as asked
            "step",
            "2024-01-01T00:00:09Z",
            parent_span_id="root",
            status="failed",
            finished_at="2024-01-01T00:00:11Z",
            result_payload={"error": {"error_type": "prefactor_otel.PrefactorTerminatedError", "message": "x"}},
        ),
    ]
    (run,) = run_views({"instances": [instance], "spans": spans})
    marked = {view["id"]: view["terminated"] for view, _ in walk(run["spans"])}
    assert marked == {"root": True, "wait": True, "tool": False, "step": True}
    assert run["totals"]["errors"] == 1 and run["totals"]["terminated"] == 3
    assert run["terminated_reason"] == "seen enough"
    # The same spans in a run that failed on its own: nothing is "terminated".
    (failed,) = run_views({"instances": [{**instance, "status": "failed"}], "spans": spans})
    assert failed["totals"]["terminated"] == 0 and failed["totals"]["errors"] == 3
