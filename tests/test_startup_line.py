"""Where spans go, said once (issue 14, item 3): a real application in a subprocess, a local server, and what
the user sees on stderr (or through the application's own logging).

The zero-code run (`opentelemetry-instrument`) printing the line once is tested in tests/test_options.py, with
the flags that configure it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from prefactor_otel.devserver import DevServer
from tests.spans import wait_for

APP = """
import logging
import sys

from opentelemetry.sdk.trace import TracerProvider
from prefactor_otel import PrefactorSpanProcessor

{logging_setup}
provider = TracerProvider()
provider.add_span_processor(PrefactorSpanProcessor())
tracer = provider.get_tracer("startup-line")
with tracer.start_as_current_span("handle request"):
    pass
provider.shutdown()
print("app done", flush=True)
"""

APP_LOGGING = 'logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="APP|%(name)s|%(message)s")'


def run_app(
    tmp_path: Path, srv: DevServer, logging_setup: str = "", **env_extra: str
) -> subprocess.CompletedProcess[str]:
    app = tmp_path / "app.py"
    app.write_text(APP.format(logging_setup=logging_setup))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFACTOR_"))}
    env.update(srv.env(), PREFACTOR_SPOOL_DIR=str(tmp_path / "spool"), PREFACTOR_FINISH_GRACE_SECONDS="0")
    env.update(env_extra)
    proc = subprocess.run([sys.executable, str(app)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "app done" in proc.stdout, proc.stderr
    assert srv.token not in proc.stdout + proc.stderr
    return proc


def destination(srv: DevServer, tmp_path: Path) -> str:
    return (
        f"prefactor-otel: spans go to {srv.api_url} for agent {srv.agent_id} (environment {srv.environment_id}, "
        f"live spans agent, spool {tmp_path / 'spool'})"
    )


@pytest.fixture
def srv():
    with DevServer(token="pf_startup_line_token_1234") as server:
        yield server


def test_by_default_exactly_one_line_on_stderr_says_where_spans_go(tmp_path, srv):
    proc = run_app(tmp_path, srv)
    assert proc.stderr.splitlines() == [destination(srv, tmp_path)]
    assert wait_for(lambda: [span["payload"]["name"] for span in srv.spans()]) == ["handle request"]


@pytest.mark.parametrize(
    "env",
    [
        {"PREFACTOR_LOG_LEVEL": "warning"},
        {"OTEL_EXPORTER_PREFACTOR_LOG_LEVEL": "off"},
        {"OTEL_PYTHON_LOG_LEVEL": "error"},  # as opentelemetry-instrument users set it
    ],
)
def test_a_log_level_above_info_silences_it(tmp_path, srv, env):
    proc = run_app(tmp_path, srv, **env)
    assert proc.stderr == ""
    assert wait_for(srv.spans)  # silenced, not disabled


def test_prefactor_log_level_beats_otel_python_log_level(tmp_path, srv):
    proc = run_app(tmp_path, srv, PREFACTOR_LOG_LEVEL="info", OTEL_PYTHON_LOG_LEVEL="error")
    assert proc.stderr.splitlines() == [destination(srv, tmp_path)]


def test_debug_shows_the_exporters_debug_lines_without_any_logging_set_up(tmp_path, srv):
    proc = run_app(tmp_path, srv, PREFACTOR_LOG_LEVEL="debug")
    lines = proc.stderr.splitlines()
    assert lines.count(destination(srv, tmp_path)) == 1
    assert any(line.startswith("Prefactor exporter ready: endpoint=") for line in lines), lines


def test_an_application_that_configured_logging_gets_it_through_its_handler_once(tmp_path, srv):
    proc = run_app(tmp_path, srv, logging_setup=APP_LOGGING)
    ours = [line for line in proc.stdout.splitlines() if line.startswith("APP|prefactor_otel|")]
    assert ours == [f"APP|prefactor_otel|{destination(srv, tmp_path)}"]
    assert proc.stderr == ""  # not a second time on stderr


def test_a_disabled_exporter_says_once_why(tmp_path, srv):
    no_token = run_app(tmp_path, srv, PREFACTOR_API_TOKEN="")
    (line,) = no_token.stderr.splitlines()
    assert "disabled" in line and "PREFACTOR_API_TOKEN is not set" in line
    invalid = run_app(tmp_path, srv, OTEL_EXPORTER_PREFACTOR_EXPORT_TIMEOUT="soon")
    (line,) = invalid.stderr.splitlines()
    assert "invalid configuration" in line and "OTEL_EXPORTER_PREFACTOR_EXPORT_TIMEOUT" in line
    assert srv.spans() == []


def test_an_unknown_log_level_is_named_and_the_line_still_said(tmp_path, srv):
    proc = run_app(tmp_path, srv, PREFACTOR_LOG_LEVEL="loud")
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and "PREFACTOR_LOG_LEVEL" in lines[0] and "'loud'" in lines[0]
    assert lines[1] == destination(srv, tmp_path)


def test_the_line_says_when_the_spool_is_off(tmp_path, srv):
    proc = run_app(tmp_path, srv, PREFACTOR_SPOOL="false")
    assert proc.stderr.splitlines() == [destination(srv, tmp_path).replace(f"spool {tmp_path / 'spool'}", "spool off")]


EXPORTER_ONLY_APP = """
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from prefactor_otel import PrefactorSpanExporter

provider = TracerProvider()
provider.add_span_processor({processor}(PrefactorSpanExporter()))
tracer = provider.get_tracer("startup-line")
for step in range(3):
    with tracer.start_as_current_span(f"handle request {{step}}"):
        with tracer.start_as_current_span("step"):
            pass
provider.shutdown()
print("app done", flush=True)
"""


def _run_exporter_only(tmp_path: Path, srv: DevServer, processor: str) -> subprocess.CompletedProcess[str]:
    app = tmp_path / "exporter_only.py"
    app.write_text(EXPORTER_ONLY_APP.format(processor=processor))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFACTOR_"))}
    env.update(srv.env(), PREFACTOR_SPOOL_DIR=str(tmp_path / "spool"), PREFACTOR_FINISH_GRACE_SECONDS="0")
    proc = subprocess.run([sys.executable, str(app)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "app done" in proc.stdout, proc.stderr
    assert wait_for(lambda: len(srv.spans()) == 6)
    return proc


def test_under_batch_span_processor_the_line_says_live_spans_are_off_and_nothing_else(tmp_path, srv):
    proc = _run_exporter_only(tmp_path, srv, "BatchSpanProcessor")
    assert proc.stderr.splitlines() == [
        destination(srv, tmp_path).replace("live spans agent", "live spans none (not under PrefactorSpanProcessor)")
    ]


def test_simple_span_processor_is_warned_against_once(tmp_path, srv):
    proc = _run_exporter_only(tmp_path, srv, "SimpleSpanProcessor")
    lines = proc.stderr.splitlines()
    assert lines[0] == destination(srv, tmp_path).replace(
        "live spans agent", "live spans none (not under PrefactorSpanProcessor)"
    )
    warnings = [line for line in lines if "SimpleSpanProcessor" in line]
    assert len(warnings) == 1 and len(lines) == 2, lines  # six exports, one warning
    assert "Use PrefactorSpanProcessor(exporter)" in warnings[0]
