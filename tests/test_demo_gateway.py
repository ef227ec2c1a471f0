"""`prefactor-otel demo --gateway` as a user runs it: the real command in a subprocess, its sample agent exported by
the OTel OTLP/HTTP exporter to the gateway it starts, which delivers to a local server (named by PREFACTOR_API_URL,
so the test can read what it holds; or the embedded one). Checked: what arrived (two runs, finished, with their
span types and statuses; nothing active), what it printed (the gateway's lines, the trees, the next step), that
nothing is left running; and, without the gateway extra, one line naming the install and exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefactor_otel.devserver import DevServer
from prefactor_otel.devserver.faults import Fault
from tests.gateway_run import GatewayProcess
from tests.spans import wait_for

LIMIT_S = 180.0  # a safety limit against a hang, not a timing assertion
INSTALL = "pip install 'prefactor-otel[gateway]'"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFACTOR_"))}
    env["TMPDIR"] = str(tmp_path)  # the demo's gateway directory is made here: the test can see it is gone
    env.update(extra)
    return env


def _demo(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "prefactor_otel", "demo", "--gateway"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=LIMIT_S)


def _left_running(marker: str) -> list[str]:
    """Command lines of live processes that mention `marker` (the demo's temporary directory root)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process ended meanwhile
            continue
        if marker in text:
            found.append(text)
    return found


def _assert_clean_exit(out: str, tmp_path: Path) -> None:
    assert "  [gateway] prefactor-otel gateway: listening http=127.0.0.1:" in out
    assert "  [gateway] prefactor-otel gateway: stopped (SIGTERM)" in out
    assert "The gateway exited with status 0" in out
    assert not list(tmp_path.glob("prefactor-demo-gateway-*")), "the gateway's directory was left behind"
    assert _left_running(str(tmp_path)) == []


def _assert_next_step(out: str) -> None:
    tail = out[out.index("Next step:") :]
    for line in (
        "OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318",
        'OTEL_EXPORTER_OTLP_HEADERS="Authorization=Bearer%20ingress-secret"',
        "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
        "prefactor-otel gateway",
    ):
        assert line in tail, tail


def test_demo_through_the_gateway_delivers_finished_runs_to_the_server_it_names(srv: DevServer, tmp_path: Path) -> None:
    proc = _demo(_env(tmp_path, **srv.env()))
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr

    # What the server holds: the demo's two runs, each finished with its own status, every span finished.
    runs = srv.instances()
    assert sorted(run["status"] for run in runs) == ["complete", "failed"], runs
    spans = srv.spans()
    assert len(spans) == 7
    assert {span["status"] for span in spans} <= {"complete", "failed"}
    assert sorted(span["schema_name"] for span in spans) == sorted(
        ["otel:agent"] * 2 + ["otel:llm"] * 3 + ["otel:tool"] * 2
    )
    assert all(run["span_counts"]["active"] == 0 and run["span_counts"]["pending"] == 0 for run in runs), runs
    # ...sent by the gateway, from the OTLP the agent exported: the spans carry the agent's resource.
    assert {span["payload"]["name"] for span in spans} == {
        "invoke_agent weather-bot",
        "chat demo-model-1",
        "execute_tool get_weather",
    }

    # What it printed: the OTLP export, the gateway's own lines, the runs read back from the API, the next step.
    assert "exported 7 span(s) over OTLP/HTTP" in out and "failed 0" in out
    assert f"The gateway will send to {srv.url} (from PREFACTOR_API_URL)" in out
    assert "  [gateway] prefactor-otel gateway: spans go to " in out
    assert f"The demo's runs, read back from {srv.url}" in out
    assert "otel:agent  invoke_agent weather-bot" in out and "otel:tool  execute_tool get_weather" in out
    assert srv.token not in out + proc.stderr  # the Prefactor token is never printed
    _assert_clean_exit(out, tmp_path)
    _assert_next_step(out)


def test_demo_through_the_gateway_to_the_embedded_server_prints_the_trees(tmp_path: Path) -> None:
    proc = _demo(_env(tmp_path))
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "started the embedded local Prefactor-compatible server" in out
    assert "exported 7 span(s) over OTLP/HTTP" in out and "failed 0" in out
    assert out.count("agent run 01") == 2  # the two runs' trees, from the server's snapshot
    assert "otel:agent  invoke_agent weather-bot  complete" in out
    assert "otel:agent  invoke_agent weather-bot  failed" in out
    assert "otel:llm  chat demo-model-1  complete" in out
    assert "no weather station for 'Mars'" in out
    assert "`prefactor-otel serve` prints" in out
    _assert_clean_exit(out, tmp_path)
    _assert_next_step(out)


def test_what_the_gateway_could_not_deliver_is_kept_and_the_printed_command_sends_it(
    srv: DevServer, tmp_path: Path
) -> None:
    srv.add_fault(Fault(status=503, times=-1))  # Prefactor unavailable for the whole demo
    proc = _demo(_env(tmp_path, **srv.env(), PREFACTOR_SHUTDOWN_TIMEOUT="2"))
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "exported 7 span(s) over OTLP/HTTP" in out and "The gateway exited with status 0" in out
    (kept,) = tmp_path.glob("prefactor-demo-gateway-*")  # kept, not removed: it holds acknowledged spans
    assert f"`prefactor-otel gateway --dir {kept}` with the same PREFACTOR_* settings sends them." in out
    assert _left_running(str(tmp_path)) == []
    assert srv.spans() == []

    srv.clear_faults()
    with GatewayProcess(srv, kept) as gateway:  # the command the demo printed, with the same settings
        gateway.wait_ready()
        assert wait_for(lambda: len(srv.spans()) == 7, 60), gateway.output()[-4000:]
        assert gateway.stop() == 0
    runs = srv.instances()
    assert sorted(run["status"] for run in runs) == ["complete", "failed"], runs
    assert len({span["id"] for span in srv.spans()}) == 7  # each span once


def test_without_the_gateway_extra_one_line_says_what_to_install(tmp_path: Path) -> None:
    # The extra's modules made unimportable in the demo's process (None in sys.modules: an import of it raises
    # ModuleNotFoundError, as when the package is not installed); the command itself is the real one.
    for module in ("uvicorn", "opentelemetry.exporter.otlp.proto.http.trace_exporter"):
        code = (
            f"import sys; sys.modules[{module!r}] = None\n"
            "from prefactor_otel.tools.cli import main\n"
            "raise SystemExit(main(['demo', '--gateway']))\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], env=_env(tmp_path), capture_output=True, text=True, timeout=LIMIT_S
        )
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stdout == ""
        (line,) = proc.stderr.splitlines()
        assert line == (
            f"prefactor-otel demo --gateway: {module} is not installed; install the gateway extra: {INSTALL}"
        )
        assert not list(tmp_path.iterdir())  # nothing started, nothing made
