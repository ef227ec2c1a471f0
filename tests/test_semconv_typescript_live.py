"""TypeScript agent libraries live through a real gateway (issue 25): each app of tests/fixtures/semconv/ts/ runs on
its pinned Node 22 against the fake OpenAI server, exports OTLP to a real `prefactor-otel gateway` subprocess (with
an ingress token), and the gateway delivers to a local server; what the server holds is then checked.

One live run per library: the Vercel AI SDK 6 (OTLP/protobuf), AI SDK 7 through @ai-sdk/otel's legacy integration
(OTLP/JSON), Mastra (its own OtelExporter, OTLP/JSON), OpenAI Agents JS and LangChain.js through OpenInference.
Each test asserts, on the server's spans:
- every span the recording of that app holds arrived once (the same span names, as many of each), each trace is one
  run, finished, and each span's Prefactor parent is the span its OTel parent names;
- every payload validates against its span type's schema; model calls carry their model and token usage, tool calls
  their name, arguments and result (or error);
- the replayed fixture test's own expectations (tests/test_semconv_typescript.py, reused, not copied): its checks
  run on records rebuilt from what the server stored (`_records`), so the live spans are typed and filled exactly as
  the recorded ones are;
- the token-total property against the fake server's ledger of this very run: the usage of the spans not marked
  aggregated adds up to what the model handed out.

The Node project is installed with `npm ci` when missing or stale, by whichever worker comes first, under
tests/node_install.py's file lock (about 65 s with npm's cache warm, 90 s cold; 620 MB, the Node 22 binary
included). One gateway and one local server per test worker for the whole module (a module-scoped fixture); each
test takes the spans its own run added. Every wait is bounded (a safety limit, never a timing assertion).

Runs on the pytest worker's test thread; the gateway is a subprocess (tests/gateway_run.py reads its output on
threads of its own), the local server serves on its own threads and is read under its store's lock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from prefactor_otel.devserver import DevServer
from prefactor_otel.mapping import SpanRecord
from tests import test_semconv_typescript as replayed
from tests.fixtures.semconv.checks import check_record, tokens_counted
from tests.fixtures.semconv.ts.record import APPS, HERE, load_spans, run_app
from tests.gateway_run import INGRESS_TOKEN, GatewayProcess
from tests.node_install import install_node_project
from tests.spans import wait_for

ARRIVAL_LIMIT_S = 60.0  # against a hang only


@dataclass
class Live:
    srv: DevServer
    gateway: GatewayProcess
    node: Path


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    node = install_node_project(HERE, node_major=22)
    with DevServer() as srv, GatewayProcess(srv, tmp_path_factory.mktemp("ts-live") / "gw") as gateway:
        gateway.wait_ready()
        yield Live(srv, gateway, node)
        assert gateway.stop() == 0, gateway.output()[-4000:]
        # conftest's strict-findings check is per test; this server outlives the tests, so it is checked here too
        assert srv.findings() == []


@dataclass
class Run:
    """One app's live run: its records (rebuilt from the server, by span name, in end order), the server's rows,
    and the fake server's token ledger."""

    records: dict[str, list[SpanRecord]]
    rows: list[dict[str, Any]]
    served: dict[str, int]


def _record(row: dict[str, Any]) -> SpanRecord:
    """A stored span as the SpanRecord its payloads came from (ids from the payload's OTel ids), for the replayed
    test's checks. The times are the server's, in ns, only to order the records."""
    payload = row["payload"]
    parent = payload["parent_span_id"]
    return SpanRecord(
        trace_id=int(payload["trace_id"], 16),
        span_id=int(payload["span_id"], 16),
        parent_span_id=int(parent, 16) if parent else None,
        parent_is_remote=False,
        name=payload["name"],
        schema_name=row["schema_name"],
        status=row["status"],
        start_time_ns=0,
        end_time_ns=0,
        payload=payload,
        result_payload=row["result_payload"],
        scope=payload["metadata"].get("otel.scope.name"),
        resource={},
        convention=payload["metadata"].get("convention"),
    )


def _records(rows: list[dict[str, Any]]) -> dict[str, list[SpanRecord]]:
    """By span name in end order, as the replayed tests group them (a recording holds spans in the order they
    ended; siblings of one name end one after the other, so start breaks a tie of the server's timestamps)."""
    out: dict[str, list[SpanRecord]] = {}
    for row in sorted(rows, key=lambda r: (r["finished_at"], r["started_at"])):
        out.setdefault(row["payload"]["name"], []).append(_record(row))
    return out


def run_live(live: Live, app: str) -> Run:
    """Run `app` through the gateway, wait until every span its recording holds is on the server and every run
    they are in is finished, and check what is common to every library."""
    fixture = APPS[app][3]
    recorded = Counter(span.name for span in load_spans(fixture))
    srv = live.srv
    before = {str(row["id"]) for row in srv.spans()}
    headers = {"OTEL_EXPORTER_OTLP_HEADERS": f"Authorization=Bearer%20{INGRESS_TOKEN}"}
    _, served = run_app(app, live.gateway.traces_url, node=live.node, env=headers)

    def new_rows() -> list[dict[str, Any]]:
        return [row for row in srv.spans() if str(row["id"]) not in before]

    def arrived() -> bool:
        rows = new_rows()
        if len(rows) < sum(recorded.values()):
            return False
        instances = {str(i["id"]): i for i in srv.instances()}
        return all(instances[str(row["agent_instance_id"])]["finished_at"] is not None for row in rows)

    assert wait_for(arrived, ARRIVAL_LIMIT_S), (len(new_rows()), recorded, live.gateway.output()[-4000:])
    rows = new_rows()
    assert Counter(row["payload"]["name"] for row in rows) == recorded  # each span once, none missing

    instances = {str(i["id"]): i for i in srv.instances()}
    traces: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        traces.setdefault(row["payload"]["trace_id"], []).append(row)
    for trace, spans in traces.items():
        runs = {str(row["agent_instance_id"]) for row in spans}
        assert len(runs) == 1, f"trace {trace} is in {len(runs)} runs"
        instance = instances[runs.pop()]
        assert instance["finished_at"] is not None and instance["status"] in ("complete", "failed"), instance
        by_otel_id = {row["payload"]["span_id"]: row for row in spans}
        assert len(by_otel_id) == len(spans)
        for row in spans:
            parent = row["payload"]["parent_span_id"]
            assert row["parent_span_id"] == (by_otel_id[parent]["id"] if parent else None), row["payload"]["name"]

    records = _records(rows)
    for recs in records.values():
        for record in recs:
            check_record(record)
            _typed_fields(record)
    # the token-total property, against the ledger of this run
    assert served["prompt_tokens"] > 0 and served["completion_tokens"] > 0
    flat = [record for recs in records.values() for record in recs]
    assert tokens_counted(flat) == {key: served[key] for key in ("prompt_tokens", "completion_tokens")}
    assert srv.findings() == []
    return Run(records, rows, served)


def _typed_fields(record: SpanRecord) -> None:
    """Model and tokens on every model call; name, arguments and result (or error) on every tool call."""
    payload, result = record.payload, record.result_payload
    assert isinstance(payload, dict) and isinstance(result, dict)
    if record.schema_name == "otel:llm":
        assert payload["model"], record.name
        if record.status == "complete":
            usage = payload["token_usage"]
            assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0, record.name
    if record.schema_name == "otel:tool":
        assert payload["tool_name"], record.name
        assert "arguments" in payload["inputs"], record.name
        if record.status == "complete":
            assert "result" in result["outputs"], record.name
        else:
            assert result["error"]["message"], record.name


class _LiveFixture(str):
    """What `load_spans` gives a replayed test for a fixture that is replaced by a live run."""


def run_replayed(
    monkeypatch: pytest.MonkeyPatch, check: Callable[[], None], live_runs: dict[str, dict[str, list[SpanRecord]]]
) -> None:
    """Run a replayed test that maps its fixture itself (`map_all(load_spans(fixture))`) with the live records in
    place of the fixtures named in `live_runs`; any other fixture it loads is the recording, as before."""
    load, map_all = replayed.load_spans, replayed.map_all

    def load_live(fixture: str) -> Any:
        return _LiveFixture(fixture) if fixture in live_runs else load(fixture)

    def map_live(spans: Any) -> dict[str, list[SpanRecord]]:
        return live_runs[spans] if isinstance(spans, _LiveFixture) else map_all(spans)

    monkeypatch.setattr(replayed, "load_spans", load_live)
    monkeypatch.setattr(replayed, "map_all", map_live)
    check()


# ------------------------------------------------------------------------------------------------ one per library


def test_ai_sdk_6_live(live: Live) -> None:
    run = run_live(live, "ai-sdk")
    for check in (
        replayed.test_ai_sdk_every_span_is_typed,
        replayed.test_ai_sdk_generate_text_tool_loop,
        replayed.test_ai_sdk_tool_that_throws,
        replayed.test_ai_sdk_stream_text,
        replayed.test_ai_sdk_generate_object,
        replayed.test_ai_sdk_stream_object,
        replayed.test_ai_sdk_embeddings,
        replayed.test_ai_sdk_failed_model_call,
    ):
        check(run.records)


def test_ai_sdk_7_legacy_live(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_live(live, "ai-sdk-7")
    # compared with the AI SDK 6 recording, as the replayed test compares the two recordings
    run_replayed(monkeypatch, replayed.test_ai_sdk_7_legacy_integration, {"ai_sdk_7_legacy.json": run.records})
    for check in (replayed.test_ai_sdk_every_span_is_typed, replayed.test_ai_sdk_embeddings):
        check(run.records)


def test_mastra_live(live: Live) -> None:
    run = run_live(live, "mastra")
    for check in (
        replayed.test_mastra_every_span_is_typed,
        replayed.test_mastra_agent_with_a_tool,
        replayed.test_mastra_tool_that_throws,
        replayed.test_mastra_structured_output_recorded,
        replayed.test_mastra_model_generation_and_steps,
        replayed.test_mastra_workflow,
    ):
        check(run.records)


def test_openai_agents_js_live(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_live(live, "openai-agents")
    run_replayed(
        monkeypatch, replayed.test_openai_agents_js_openinference, {"openai_agents_openinference.json": run.records}
    )


def test_langchain_js_live(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_live(live, "langchain")
    run_replayed(
        monkeypatch,
        replayed.test_langchain_js_create_agent_openinference,
        {"langchain_openinference.json": run.records},
    )
