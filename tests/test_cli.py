"""`prefactor-otel demo` on a machine with no network: embedded server, trees printed, exit 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_autoconfig import Distros, distribution_order


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


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFACTOR_"))}
    env.update(extra)
    return env


def test_doctor_against_the_local_server_and_token_not_printed():
    from prefactor_otel.devserver import DevServer

    token = "pf_doctor_secret_token"
    with DevServer(token=token) as srv:
        proc = subprocess.run(
            [sys.executable, "-m", "prefactor_otel", "doctor"],
            env=_env(
                PREFACTOR_API_URL=srv.url,
                PREFACTOR_API_TOKEN=token,
                OTEL_TRACES_EXPORTER="prefactor",
                OTEL_PYTHON_DISTRO="prefactor",
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stdout
    assert "/ping -> HTTP 200" in proc.stdout and "resolves to PrefactorSpanExporter" in proc.stdout
    assert "will use the Prefactor distro and configurator" in proc.stdout
    assert token not in proc.stdout + proc.stderr


def test_doctor_reports_missing_token_and_bad_values():
    proc = subprocess.run(
        [sys.executable, "-m", "prefactor_otel", "doctor"], env=_env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1 and "PREFACTOR_API_TOKEN is missing" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "prefactor_otel", "doctor"],
        env=_env(PREFACTOR_EXPORT_TIMEOUT="soon"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "PREFACTOR_EXPORT_TIMEOUT" in proc.stdout


@pytest.mark.parametrize(
    ("distros", "distro_env", "expected"),
    [
        ("theirs-listed-first", None, "[!!] another OTel distro is installed (distro)"),
        ("theirs-listed-first", "prefactor", "[ok] opentelemetry-instrument will use the Prefactor distro"),
        ("theirs-listed-first", "distro", "[!!] OTEL_PYTHON_DISTRO=distro: the Prefactor distro and configurator"),
        ("without-opentelemetry-distro", None, "[ok] opentelemetry-instrument will use the Prefactor distro"),
    ],
)
def test_doctor_says_whether_opentelemetry_instrument_will_use_our_set_up(
    tmp_path: Path, distros: Distros, distro_env: str | None, expected: str
) -> None:
    env = _env(OTEL_TRACES_EXPORTER="prefactor", PYTHONPATH=str(distribution_order(tmp_path, distros)))
    if distro_env is not None:
        env["OTEL_PYTHON_DISTRO"] = distro_env
    proc = subprocess.run(
        [sys.executable, "-m", "prefactor_otel", "doctor"], env=env, capture_output=True, text=True, timeout=60
    )
    assert expected in proc.stdout, proc.stdout + proc.stderr


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
        again = subprocess.run(
            [sys.executable, "-m", "prefactor_otel", "terminate", run["id"]],
            env=_env(PREFACTOR_API_URL=srv.url, PREFACTOR_API_TOKEN="pf_cli_token"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.returncode == 1 and "HTTP 409" in again.stderr  # a finished run cannot be terminated
        exporter.shutdown()


def test_doctor_flags_an_sdk_that_cannot_take_our_processor(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk import _configuration as sdk_configuration

    from prefactor_otel.cli import _zero_code_findings

    env = {"OTEL_TRACES_EXPORTER": "prefactor", "OTEL_PYTHON_DISTRO": "prefactor"}
    assert all(ok for ok, _ in _zero_code_findings(env))

    def before_1_40(auto_instrumentation_version: str | None = None) -> None:  # the SDK's signature before 1.40
        raise AssertionError("the doctor must not set anything up")

    monkeypatch.setattr(sdk_configuration, "_initialize_components", before_1_40)
    assert (False, "opentelemetry-sdk < 1.40: zero-code runs put the exporter in a BatchSpanProcessor") in (
        _zero_code_findings(env)
    )
