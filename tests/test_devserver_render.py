"""render_runs, the foreground `serve` helper and the pytest plugin of the dev server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import httpx
import pytest

from prefactor_otel.devserver import DevServer, render_runs
from prefactor_otel.model import ids

pytest_plugins = ["pytester"]


def _span(
    span_id: str, name: str | None, started: str, finished: str | None, parent: str | None = None, **extra: Any
) -> dict[str, Any]:
    payload: dict[str, Any] = {"name": name} if name else {}
    payload.update(extra.pop("payload", {}))
    return {
        "agent_instance_id": extra.pop("instance", "run-1"),
        "schema_name": extra.pop("schema_name", "otel:span"),
        "status": extra.pop("status", "complete"),
        "payload": payload,
        "id": span_id,
        "parent_span_id": parent,
        "started_at": started,
        "finished_at": finished,
    }


def test_render_runs_over_a_real_server() -> None:
    with DevServer() as srv:
        _check_render_over_http(srv)


def _check_render_over_http(srv: DevServer) -> None:
    instance_id, root, llm, tool, orphan = (srv.new_id() for _ in range(5))
    schemas = [{"name": n, "params_schema": {}} for n in ("otel:agent", "otel:llm", "otel:tool")]

    def span(key: str, span_id: str, schema: str, name: str, start: str, end: str, parent: str | None = None):
        details = {
            "agent_instance_id": instance_id,
            "schema_name": schema,
            "status": "complete",
            "payload": {"name": name},
            "id": span_id,
            "parent_span_id": parent,
            "started_at": start,
            "finished_at": end,
        }
        return {"_type": "agent_spans/create", "idempotency_key": key, "details": details}

    items = [
        {
            "_type": "agent_instances/register",
            "idempotency_key": "render-reg",
            "id": instance_id,
            "agent_version": {"name": "weather-bot", "external_identifier": "2.1"},
            "agent_schema_version": {"span_type_schemas": schemas},
        },
        {
            "_type": "agent_instances/start",
            "idempotency_key": "render-start",
            "agent_instance_id": instance_id,
            "timestamp": "2024-05-01T10:00:00.000Z",
        },
        span("render-root", root, "otel:agent", "invoke_agent", "2024-05-01T10:00:00.000Z", "2024-05-01T10:00:02.500Z"),
        # Created tool-first: the tree must still list the earlier-started llm span first.
        span(
            "render-tool",
            tool,
            "otel:tool",
            "get_weather",
            "2024-05-01T10:00:01.200Z",
            "2024-05-01T10:00:01.212Z",
            root,
        ),
        span(
            "render-llm1", llm, "otel:llm", "chat gpt-4o", "2024-05-01T10:00:00.100Z", "2024-05-01T10:00:01.100Z", root
        ),
        span("render-orph", orphan, "otel:tool", "late_child", "2024-05-01T10:00:03.000Z", "2024-05-01T10:00:03.001Z"),
        {
            "_type": "agent_instances/finish",
            "idempotency_key": "render-finish",
            "agent_instance_id": instance_id,
            "status": "complete",
            "timestamp": "2024-05-01T10:00:04.000Z",
        },
    ]
    items[5]["details"]["payload"]["metadata"] = {"orphaned": True}
    with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {srv.token}"}) as c:
        outputs = c.post("/api/v1/bulk", json={"items": items}).json()["outputs"]
    assert all(o["status"] == "success" for o in outputs.values()), outputs
    expected = "\n".join(
        [
            f"agent run {instance_id}  complete  weather-bot@2.1  2024-05-01 10:00:00Z  4000 ms",
            "  4 spans  0 errors",
            "├─ otel:agent  invoke_agent  complete  2500 ms",
            "│  ├─ otel:llm  chat gpt-4o  complete  1000 ms",
            "│  └─ otel:tool  get_weather  complete  12 ms",
            "└─ otel:tool  late_child  complete  1 ms  [orphan]",
            "",
        ]
    )
    assert render_runs(srv.snapshot()) == expected


def test_render_runs_marks_unknown_parents_and_survives_cycles() -> None:
    snapshot = {
        "instances": [
            {"id": "run-1", "status": "active", "agent_version_id": "v1", "started_at": "2024-01-01T00:00:00.000Z"}
        ],
        "agent_versions": [{"id": "v1", "name": "bot"}],
        "spans": [
            _span("b", "second", "2024-01-01T00:00:02.000Z", None, status="active"),
            _span("a", "first", "2024-01-01T00:00:01.000Z", "2024-01-01T00:00:01.250Z"),
            _span("c", None, "2024-01-01T00:00:03.000Z", "2024-01-01T00:00:03.000Z", parent="missing"),
            _span("x", "loop-x", "2024-01-01T00:00:04.000Z", None, parent="y"),
            _span("y", "loop-y", "2024-01-01T00:00:05.000Z", None, parent="x"),
            _span("s", "stray", "2024-01-01T00:00:06.000Z", None, instance="run-unknown"),
        ],
    }
    text = render_runs(snapshot)
    lines = text.splitlines()
    # Runs newest first: the spans of a run the snapshot does not list come first here (they are the newest).
    assert lines[0] == "spans of an unknown agent run run-unknown" and "stray" in lines[2]
    lines = lines[lines.index("agent run run-1  active  bot  2024-01-01 00:00:00Z  -") :]
    assert lines[1] == "  5 spans  0 errors"
    assert lines[2:7] == [
        "├─ otel:span  first  complete  250 ms",
        "├─ otel:span  second  active  -",
        "├─ otel:span  complete  0 ms  [orphan]",
        "└─ otel:span  loop-x  complete  -  [orphan]",
        "   └─ otel:span  loop-y  complete  -",
    ]
    assert render_runs(snapshot) == text  # deterministic


def test_render_runs_empty() -> None:
    assert render_runs({"instances": [], "spans": []}) == "no agent runs\n"


def test_render_runs_handles_deep_nesting() -> None:
    depth = 3000  # deeper than the recursion limit
    spans = [
        _span(f"s{i}", None, "2024-01-01T00:00:00.000Z", None, parent=f"s{i - 1}" if i else None) for i in range(depth)
    ]
    text = render_runs({"instances": [{"id": "run-1", "status": "active"}], "spans": spans})
    assert len(text.splitlines()) == depth + 2  # the header, the totals line, a line per span


# --------------------------------------------------------------------------- serve() and the plugin


def test_serve_runs_in_the_foreground_until_sigterm() -> None:
    agent = ids.encode(1_700_000_000_000, 4242, 7)
    code = (
        "from prefactor_otel.devserver import serve; "
        f"raise SystemExit(serve(host='127.0.0.1', port=0, token='pf_cli_token', agent_id='{agent}'))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        lines = []
        assert proc.stdout is not None
        while True:
            line = proc.stdout.readline()
            assert line, f"serve() exited early: {proc.stderr.read() if proc.stderr else ''}"
            lines.append(line.strip())
            if line.startswith("Press Ctrl-C"):
                break
        url = lines[0].rsplit(" ", 1)[1]
        assert f"export PREFACTOR_AGENT_ID={agent}" in lines
        assert f"export PREFACTOR_API_URL={url}" in lines
        assert "export PREFACTOR_API_TOKEN=pf_cli_token" in lines
        assert any(line.startswith("export PREFACTOR_ENVIRONMENT_ID=") for line in lines)
        r = httpx.get(url + "/api/v1/ping", headers={"Authorization": "Bearer pf_cli_token"})
        assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopped: 0 agent runs, 0 spans received" in out
    assert err == ""


def test_pytest_plugin_fixture_starts_and_stops_a_server(pytester: pytest.Pytester) -> None:
    # Imported in a conftest rather than named in `-p`/`pytest_plugins`: that keeps working once the plugin
    # is also registered through an entry point (pluggy refuses one module under two names).
    pytester.makeconftest("from prefactor_otel.devserver.pytest_plugin import prefactor_server  # noqa: F401\n")
    pytester.makepyfile(
        """
        import httpx

        seen = []

        def test_first(prefactor_server):
            seen.append(prefactor_server)
            r = httpx.get(prefactor_server.url + "/api/v1/ping",
                          headers={"Authorization": "Bearer " + prefactor_server.token})
            assert r.status_code == 200

        def test_second(prefactor_server):
            assert not seen[0].running
            assert prefactor_server.running and prefactor_server.url != seen[0].url
        """
    )
    result = pytester.runpytest("-q")
    result.assert_outcomes(passed=2)
