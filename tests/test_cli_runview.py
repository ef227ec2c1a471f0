"""What `prefactor-otel demo` and `show` print, through the real CLI: model, tokens, tool, previews, errors and
totals, spans in the order they ran, the runs read back through the API when PREFACTOR_API_URL is set, and the
next step."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from prefactor_otel.devserver import DevServer, Fault
from tests.spans import agent_trace, exporter_for, make_provider

NEXT_STEP = "Next step: trace your own agent the same way"
RUN_YOUR_AGENT = (
    "OTEL_TRACES_EXPORTER=prefactor OTEL_SERVICE_NAME=your-agent opentelemetry-instrument python your_agent.py"
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFACTOR_"))}
    env.update(extra)
    return env


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefactor_otel", *args], env=env, capture_output=True, text=True, timeout=120
    )


def _paris_run(out: str) -> list[str]:
    """The lines of the demo's Paris run: its header up to the blank line after its tree."""
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("agent run ") and "complete" in line)
    end = lines.index("", header)
    return lines[header:end]


def _check_demo_trees(out: str) -> None:
    paris = _paris_run(out)
    assert "weather-bot" in out
    assert paris[1] == "  4 spans  0 errors  tokens in 113 / out 21 / total 134  models demo-model-1  tools get_weather"
    spans = [line for line in paris[2:] if "otel:" in line]
    # In the order they ran: the tool between the two model calls.
    assert [line.split("otel:")[1].split()[0] for line in spans] == ["agent", "llm", "tool", "llm"]
    assert "model demo-model-1  tokens in 42 / out 9" in spans[1]
    assert "tool get_weather" in spans[2]
    assert "model demo-model-1  tokens in 71 / out 12" in spans[3]
    details = [line.split("  ")[-1].strip() for line in paris if line.lstrip("│ ").startswith(("> ", "< "))]
    assert details == [
        "> user: What's the weather in Paris?",
        '< assistant: → get_weather({"city":"Paris"})',
        '> {"city":"Paris"}',
        "< 18°C, light rain",
        "> tool: 18°C, light rain",
        "< assistant: Paris: 18°C, light rain",
    ]
    assert "error: prefactor_otel.tools.demo_agent.ToolFailed: no weather station for 'Mars'" in out
    assert max(len(line) for line in paris) <= 100


def test_demo_prints_model_tokens_tools_previews_errors_in_order_and_the_next_step() -> None:
    proc = _cli("demo", env=_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _check_demo_trees(proc.stdout)
    tail = proc.stdout.rstrip().splitlines()[-4:]
    assert tail[0].startswith(NEXT_STEP) and RUN_YOUR_AGENT in tail[2] and "prefactor-otel serve" in tail[1]


def test_demo_with_an_api_url_prints_its_runs_read_back_through_the_api() -> None:
    with DevServer() as srv:
        # A run the demo did not send: it must not be shown as the demo's.
        provider, collector = make_provider("someone-else", "9.9")
        agent_trace(provider)
        exporter = exporter_for(srv)
        exporter.export(collector.spans)
        exporter.shutdown()
        proc = _cli("demo", env=_env(**srv.env()))
        reads = [r.path for r in srv.requests if r.method == "GET"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert f"The demo's runs, read back from {srv.url}/api/v1:" in out
    _check_demo_trees(out)
    assert out.count("agent run ") == 2 and "invoke_agent support" not in out
    assert "/api/v1/agent_instance" in reads and "/api/v1/agent_spans" in reads  # the API's reads, no dev endpoint
    assert not any(path.startswith("/_dev/") for path in reads)
    assert NEXT_STEP in out and RUN_YOUR_AGENT in out and srv.token not in out + proc.stderr


def test_demo_says_in_one_line_when_the_token_cannot_read_the_runs() -> None:
    with DevServer() as srv:
        srv.add_fault(Fault(path="/api/v1/agent_instance", method="GET", status=401, times=-1))
        proc = _cli("demo", env=_env(**srv.env()))
    assert proc.returncode == 0, proc.stdout + proc.stderr  # the spans were delivered: only the read failed
    (line,) = [line for line in proc.stdout.splitlines() if "cannot read the runs back" in line]
    assert "HTTP 401" in line and "this token cannot read runs" in line
    assert "otel:llm" not in proc.stdout and NEXT_STEP in proc.stdout


def test_show_prints_model_tokens_tool_previews_and_errors_of_a_running_server() -> None:
    with DevServer(token="pf_show_token") as srv:
        provider, collector = make_provider()
        with pytest.raises(RuntimeError):
            agent_trace(provider, fail=True)
        exporter = exporter_for(srv)
        exporter.export(collector.spans)
        exporter.shutdown()
        proc = _cli("show", "--url", srv.url, "--token", srv.token, env=_env())
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[1] == "  4 spans  3 errors  tokens in 12 / out 5 / total 17  models gpt-4o  tools lookup"
    (chat,) = [line for line in lines if "chat gpt-4o" in line]
    assert "model gpt-4o  tokens in 12 / out 5" in chat
    assert any(line.strip().endswith("> user: hi") for line in lines)
    (tool,) = [line for line in lines if "execute_tool lookup" in line]
    assert "failed" in tool and "tool lookup" in tool
    assert any("error: RuntimeError: tool broke" in line for line in lines)


def test_show_watch_frames_use_the_same_span_lines() -> None:
    with (
        DevServer(token="pf_watch_token") as srv,
        httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {srv.token}"}, timeout=10) as client,
    ):
        schema = {"span_type_schemas": [{"name": "otel:llm", "params_schema": {"type": "object"}}]}
        body = {"agent_version": {"name": "watch-agent"}, "agent_schema_version": schema}
        run_id = client.post("/api/v1/agent_instance/register", json=body).json()["details"]["id"]
        assert client.post(f"/api/v1/agent_instance/{run_id}/start", json={}).status_code == 200
        payload = {
            "name": "chat gpt-4o",
            "model": "gpt-4o",
            "inputs": {"messages": [{"role": "user", "content": "hi"}]},
        }
        details = {"agent_instance_id": run_id, "schema_name": "otel:llm", "status": "active", "payload": payload}
        assert client.post("/api/v1/agent_spans", json={"details": details}).status_code == 200
        proc = _cli(
            "show", "--watch", "--count", "1", env=_env(PREFACTOR_API_URL=srv.url, PREFACTOR_API_TOKEN=srv.token)
        )
    assert proc.returncode == 0, proc.stderr
    (line,) = [line for line in proc.stdout.splitlines() if "chat gpt-4o" in line]
    assert "otel:llm  chat gpt-4o  active" in line and "model gpt-4o" in line
    assert any(line.strip().endswith("> user: hi") for line in proc.stdout.splitlines())


TERMINATED_APP = """
import sys, time
from opentelemetry.sdk.trace import TracerProvider
import prefactor_otel
from prefactor_otel import PrefactorSpanProcessor, PrefactorTerminatedError

provider = TracerProvider()
processor = PrefactorSpanProcessor(schedule_delay_millis=100)
provider.add_span_processor(processor)
tracer = provider.get_tracer("stopper")
agent = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "stopper"}
tool = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}
try:
    with tracer.start_as_current_span("invoke_agent stopper", attributes=agent):
        with tracer.start_as_current_span("execute_tool search", attributes=tool):
            for _ in range(40):  # bounded: the run id is known within about half a second
                if processor.run_id():
                    break
                time.sleep(0.1)
            print("run", processor.run_id(), flush=True)
            sys.stdin.readline()  # the test terminates the run, then says go on
            for _ in range(400):  # bounded: the poll (0.2 s here) tells the run it was terminated
                prefactor_otel.raise_if_terminated()
                time.sleep(0.05)
except PrefactorTerminatedError as stop:
    print("error", stop, flush=True)
provider.shutdown()
"""


def test_a_terminated_run_shows_terminated_with_its_reason_in_show_and_in_the_apps_error(tmp_path) -> None:
    with DevServer(token="pf_show_terminated") as srv:
        app = tmp_path / "app.py"
        app.write_text(TERMINATED_APP)
        env = _env(**srv.env(), PREFACTOR_CONTROL_POLL_INTERVAL="0.2", PREFACTOR_LIVE_SPANS="all")
        env["PREFACTOR_SPOOL_DIR"] = str(tmp_path / "spool")
        with subprocess.Popen(
            [sys.executable, str(app)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        ) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            run_id = proc.stdout.readline().split()[1]
            stopped = _cli(
                "terminate", run_id, "--reason", "seen enough", "--url", srv.url, "--token", srv.token, env=_env()
            )
            assert stopped.returncode == 0, stopped.stderr
            out, _ = proc.communicate("go\n", timeout=120)
        assert proc.returncode == 0
        assert out.splitlines() == [f"error run {run_id} terminated in Prefactor: seen enough"]  # no "p2"
        shown = _cli("show", "--url", srv.url, "--token", srv.token, env=_env())
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"agent run {run_id}  terminated  ")
    assert lines[0].endswith("terminated in Prefactor: seen enough")
    assert lines[1] == "  2 spans  0 errors  2 stopped by the termination  tools search"  # on purpose: no error
    assert "failed" not in shown.stdout
    (root,) = [line for line in lines if "invoke_agent stopper" in line]
    (tool,) = [line for line in lines if "execute_tool search" in line]
    assert "  terminated  " in root and "  terminated  " in tool


def test_show_says_no_total_rather_than_total_0_when_spans_report_input_tokens_only() -> None:
    with (
        DevServer(token="pf_tokens_token") as srv,
        httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {srv.token}"}, timeout=10) as client,
    ):
        schema = {"span_type_schemas": [{"name": "otel:llm", "params_schema": {"type": "object"}}]}
        body = {"agent_version": {"name": "embedder"}, "agent_schema_version": schema}
        run_id = client.post("/api/v1/agent_instance/register", json=body).json()["details"]["id"]
        assert client.post(f"/api/v1/agent_instance/{run_id}/start", json={}).status_code == 200
        # An embeddings call, say: input tokens and nothing else.
        payload = {"name": "embeddings text-embedding-3", "token_usage": {"prompt_tokens": 5}}
        details = {"agent_instance_id": run_id, "schema_name": "otel:llm", "status": "active", "payload": payload}
        created = client.post("/api/v1/agent_spans", json={"details": details})
        assert created.status_code == 200, created.text
        assert client.post(f"/api/v1/agent_spans/{created.json()['details']['id']}/finish", json={}).status_code == 200
        proc = _cli("show", env=_env(PREFACTOR_API_URL=srv.url, PREFACTOR_API_TOKEN=srv.token))
    assert proc.returncode == 0, proc.stderr
    (totals,) = [line for line in proc.stdout.splitlines() if line.startswith("  1 span  ")]
    assert totals.endswith("tokens in 5 / out 0"), totals
