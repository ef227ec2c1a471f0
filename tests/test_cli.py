"""`prefactor-otel demo` on a machine with no network: embedded server, trees printed, exit 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import httpx


def test_demo_runs_offline_and_prints_trees():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFACTOR_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "prefactor_otel", "demo"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "embedded local Prefactor-compatible server" in out
    assert "otel:agent" in out and "otel:llm" in out and "otel:tool" in out
    assert "complete" in out and "failed" in out
    assert "dropped 0" in out
    # The demo runs the exporter as the README's first example does, in PrefactorSpanProcessor: its start-up line
    # must not say `live spans none (not under PrefactorSpanProcessor)` to someone trying the package first.
    assert "live spans agent" in proc.stderr and "not under PrefactorSpanProcessor" not in proc.stderr


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFACTOR_"))}
    env.update(extra)
    return env


def test_serve_and_show_print_the_runs_a_server_holds():
    from prefactor_otel.devserver import DevServer
    from tests.spans import agent_trace, exporter_for, make_provider

    with DevServer(token="pf_show_token") as srv:
        exporter = exporter_for(srv, finish_grace_seconds=0)
        provider, collector = make_provider()
        agent_trace(provider)
        exporter.export(collector.spans)
        exporter.shutdown()
        proc = subprocess.run(
            [sys.executable, "-m", "prefactor_otel", "show", "--url", srv.url, "--token", srv.token],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    assert "invoke_agent support" in proc.stdout and "chat gpt-4o" in proc.stdout and "complete" in proc.stdout


def test_terminate_a_run_on_the_local_server_from_the_command_line():
    from prefactor_otel.devserver import DevServer
    from tests.spans import agent_trace, exporter_for, make_provider

    provider, collector = make_provider()
    agent_trace(provider)
    with DevServer(token="pf_cli_token") as srv:
        exporter = exporter_for(srv, finish_grace_seconds=60, spool=False)  # the run stays active
        exporter.export([s for s in collector.spans if s.parent is not None][:1])
        exporter.export([s for s in collector.spans if s.parent is None])
        (run,) = srv.instances()
        proc = subprocess.run(
            [sys.executable, "-m", "prefactor_otel", "terminate", run["id"], "--reason", "runaway loop"],
            env=_env(PREFACTOR_API_URL=srv.url, PREFACTOR_API_TOKEN="pf_cli_token"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        (run,) = srv.instances()
        assert run["status"] == "terminated" and run["termination_reason"] == "runaway loop"
        # The API's path was called (not the dev endpoint), and the run's in-flight spans were closed.
        assert [r.path for r in srv.requests if r.path.endswith("/terminate")] == [
            f"/api/v1/agent_instance/{run['id']}/terminate"
        ]
        assert run["span_counts"]["active"] == 0 and run["span_counts"]["pending"] == 0
        again = subprocess.run(
            [sys.executable, "-m", "prefactor_otel", "terminate", run["id"], "--reason", "again"],
            env=_env(PREFACTOR_API_URL=srv.url + "/api/v1", PREFACTOR_API_TOKEN="pf_cli_token"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.returncode == 1 and "HTTP 409" in again.stderr  # a finished run cannot be terminated
        no_reason = subprocess.run(
            [sys.executable, "-m", "prefactor_otel", "terminate", run["id"]],
            env=_env(PREFACTOR_API_URL=srv.url, PREFACTOR_API_TOKEN="pf_cli_token"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert no_reason.returncode == 2 and "--reason" in no_reason.stderr  # the API requires one: so do we
        exporter.shutdown()


def _live_run(client: httpx.Client, srv: Any) -> tuple[str, str]:
    """An active run with one active span named "fetch weather", over REST as a live exporter would."""
    schema = {"span_type_schemas": [{"name": "agent:tool", "params_schema": {"type": "object"}}]}
    body = {"agent_version": {"name": "watch-agent"}, "agent_schema_version": schema}
    run_id = client.post("/api/v1/agent_instance/register", json=body).json()["details"]["id"]
    assert client.post(f"/api/v1/agent_instance/{run_id}/start", json={}).status_code == 200
    details = {"agent_instance_id": run_id, "schema_name": "agent:tool", "status": "active"}
    r = client.post("/api/v1/agent_spans", json={"details": {**details, "payload": {"name": "fetch weather"}}})
    assert r.status_code == 200, r.text
    return run_id, r.json()["details"]["id"]


def test_show_watch_shows_live_runs_and_in_flight_spans_as_they_change():
    from prefactor_otel.devserver import DevServer

    show = [sys.executable, "-m", "prefactor_otel", "show", "--watch", "--interval", "0.2"]
    with (
        DevServer(token="pf_watch_token") as srv,
        httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {srv.token}"}, timeout=10) as client,
    ):
        run_id, span_id = _live_run(client, srv)
        env = _env(PREFACTOR_API_URL=srv.url, PREFACTOR_API_TOKEN=srv.token)
        proc = subprocess.run([*show, "--count", "2"], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.count(f"{srv.url}  ") == 2  # two frames, each headed by the URL and the time
        frame = proc.stdout.split(f"{srv.url}  ")[-1]
        assert f"agent run {run_id}  active" in frame and "1 span in flight" in frame
        assert "agent:tool  fetch weather  active" in frame and " s" in frame

        # The span finishes (the bulk item a live exporter sends), then the run: nothing is in flight any more.
        item = {"_type": "agent_spans/finish", "idempotency_key": "watch-finish-1", "agent_span_id": span_id}
        assert client.post("/api/v1/bulk", json={"items": [{**item, "status": "complete"}]}).status_code == 200
        proc = subprocess.run([*show, "--count", "1"], env=env, capture_output=True, text=True, timeout=60)
        assert "0 spans in flight" in proc.stdout
        (done,) = [line for line in proc.stdout.splitlines() if "fetch weather" in line]
        assert "agent:tool  fetch weather  complete" in done and "[in flight]" not in done  # the run as it grows
        assert client.post(f"/api/v1/agent_instance/{run_id}/finish", json={}).status_code == 200
        proc = subprocess.run([*show, "--count", "1"], env=env, capture_output=True, text=True, timeout=60)
        assert "no live agent runs" in proc.stdout and "1 finished run not shown" in proc.stdout


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_show_watch_runs_until_ctrl_c(tmp_path):
    from prefactor_otel.devserver import DevServer

    out = tmp_path / "watch.out"
    with DevServer(token="pf_watch_token") as srv, out.open("w") as sink:
        env = _env(PREFACTOR_API_URL=srv.url, PREFACTOR_API_TOKEN=srv.token)
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefactor_otel", "show", "--watch", "--interval", "0.1"],
            env=env,
            stdout=sink,
            stderr=subprocess.PIPE,
            text=True,
            # As a test runner started in the background (`pytest &` in a script) starts it: SIGINT inherited
            # ignored. The watch must stop on Ctrl-C all the same.
            preexec_fn=_ignore_sigint,
        )
        try:
            for _ in range(600):  # bounded: until three frames were printed
                if out.read_text().count("no live agent runs") >= 3 or proc.poll() is not None:
                    break
                time.sleep(0.05)
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    assert out.read_text().count("no live agent runs") >= 3


def test_version_prints_the_package_version():
    from prefactor_otel import __version__

    proc = subprocess.run(
        [sys.executable, "-m", "prefactor_otel", "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"prefactor-otel {__version__}"
