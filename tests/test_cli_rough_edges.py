"""The command line as a new user meets it (issue 24): help that says what each command does, output piped into a
reader that stops early, messages that end in the fix, and spans an outage left on disk: `doctor` names them and
`prefactor-otel spool send` delivers them to the restarted server.

Every command runs as a subprocess (`python -m prefactor_otel`, the console script's `main`) with this process's
environment minus every OTEL_* and PREFACTOR_* variable (PYTHONPATH passes on: a worktree's source is the one run);
servers are real local servers on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from prefactor_otel.devserver import DevServer

COMMANDS = ("demo", "serve", "show", "terminate", "doctor", "spool", "gateway")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFACTOR_"))}
    env.update(extra)
    return env


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefactor_otel", *args],
        env=_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------------------------------- help


def _description(help_text: str) -> str:
    """The paragraph between the usage lines and the first argument section."""
    body = help_text.split("\n\n", 1)[1]
    return body.split("\npositional arguments:", 1)[0].split("\noptions:", 1)[0].strip()


def test_the_top_level_help_lists_every_command_without_markdown() -> None:
    done = cli("--help")
    assert done.returncode == 0
    for command in COMMANDS:
        assert re.search(rf"^    {command} +\S", done.stdout, re.M), (command, done.stdout)
    assert "`" not in _description(done.stdout), done.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_a_description(command: str) -> None:
    done = cli(command, "--help")
    assert done.returncode == 0, done.stderr
    assert len(_description(done.stdout)) > 80, done.stdout


def test_demo_help_shows_its_defaults_and_doctor_help_says_what_it_reads() -> None:
    demo = cli("demo", "--help").stdout
    assert "(default: 600)" in demo and "(default: 1.0)" in demo
    doctor = " ".join(cli("doctor", "--help").stdout.split())
    assert "PREFACTOR_*" in doctor and "opentelemetry-instrument" in doctor and "Exit status" in doctor


def test_help_of_the_exporter_lists_only_its_public_api() -> None:
    probe = (
        "import pydoc, prefactor_otel\n"
        "print(pydoc.render_doc(prefactor_otel.PrefactorSpanExporter, renderer=pydoc.plaintext))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], env=_env(), capture_output=True, text=True, timeout=60)
    methods = set(re.findall(r"^ \|  (\w+)\(", done.stdout, re.M))
    assert {"export", "force_flush", "shutdown", "stats", "check", "run_id"} <= methods, methods
    assert not {"count_start_dropped", "start_queue"} & methods, methods


# ----------------------------------------------------------------------------------------------- piped output


def _with_reader_gone(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """Run with stdout a pipe whose reader closed before the command wrote anything (`| head` that has its
    lines): every write fails with EPIPE. The exit status and stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefactor_otel", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    return proc.wait(120), err


def test_piping_show_and_doctor_into_a_reader_that_stops_prints_no_traceback() -> None:
    from tests.spans import agent_trace, exporter_for, make_provider

    with DevServer(token="pf_pipe_token") as srv:
        exporter = exporter_for(srv, finish_grace_seconds=0)
        provider, collector = make_provider()
        for _ in range(30):  # more than a pipe's buffer of output
            agent_trace(provider)
        exporter.export(collector.spans)
        exporter.shutdown()
        env = _env(PREFACTOR_API_URL=srv.url, PREFACTOR_API_TOKEN=srv.token, PREFACTOR_SPOOL="false")
        for args in (("show",), ("show", "--json"), ("doctor",), ("--help",)):
            code, err = _with_reader_gone(*args, env=env)
            assert "Traceback" not in err and "BrokenPipeError" not in err, (args, err)
            # as a program SIGPIPE ended (argparse's --help exits before our flush: its status stays 0)
            assert code == (0 if args == ("--help",) else 141), (args, code, err)


# ------------------------------------------------------------------------------------- messages that say the fix


def test_show_against_a_dead_port_asks_whether_the_server_runs() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = cli("show", "--url", url, "--token", "pf_x")
    assert done.returncode == 2
    assert "is `prefactor-otel serve` running?" in done.stderr, done.stderr
    assert "ConnectError" not in done.stderr and "Traceback" not in done.stderr
    # The watch keeps polling (a server may come back), and its frame says the same.
    watch = cli("show", "--watch", "--count", "1", "--url", url, "--token", "pf_x")
    assert watch.returncode == 2 and "is `prefactor-otel serve` running?" in watch.stdout, watch.stdout


def test_show_without_any_token_asks_whether_serve_was_started(tmp_path: Path) -> None:
    missing = tmp_path / "never-started.json"
    for command in (("show",), ("terminate", "some-run", "--reason", "x")):
        done = cli(*command, "--state", str(missing))
        assert done.returncode == 2, done.stderr
        assert f"no state file {missing}: has `prefactor-otel serve` been started?" in done.stderr, done.stderr


@pytest.mark.parametrize("variable", ["OTEL_EXPORTER_PREFACTOR_API_TOKEN", "PREFACTOR_API_TOKEN"])
def test_a_refused_token_names_the_variable_it_came_from(variable: str) -> None:
    with DevServer(token="pf_the_right_token") as srv:
        done = cli("show", "--url", srv.url, env=_env(**{variable: "pf_a_wrong_token"}))
    assert done.returncode == 2
    assert f"the token from {variable} was refused" in done.stderr, done.stderr
    assert "pf_a_wrong_token" not in done.stderr + done.stdout


# ------------------------------------------------------------------------------- what an outage leaves on disk

# A one-shot script: three runs through PrefactorSpanProcessor, then exit (the provider's shutdown at exit).
ONE_SHOT = textwrap.dedent(
    """
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from prefactor_otel import PrefactorSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "one-shot"}))
    provider.add_span_processor(PrefactorSpanProcessor())
    tracer = provider.get_tracer("one-shot")
    agent = {"gen_ai.operation.name": "invoke_agent"}
    for run in range(3):
        with tracer.start_as_current_span(f"invoke_agent run{run}", attributes=agent):
            for step in range(4):
                with tracer.start_as_current_span(f"execute_tool step{step}", attributes={"gen_ai.tool.name": "t"}):
                    pass
    provider.shutdown()
    print("script done")
    """
)
SPANS = 3 * 5


def _spool_files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if re.match(r"^\d{20}-\d+-\d+\.json", p.name)]


def test_an_outage_leaves_spans_on_disk_doctor_names_them_and_spool_send_delivers_them(tmp_path: Path) -> None:
    port = free_port()
    spool_dir = tmp_path / "spool"
    with DevServer(token="pf_outage_token", port=port) as first:
        agent_id, environment_id = first.agent_id, first.environment_id
    # the server is down now: a real outage for the script, which exits with its spans on disk
    env = _env(
        PREFACTOR_API_URL=f"http://127.0.0.1:{port}",
        PREFACTOR_API_TOKEN="pf_outage_token",
        PREFACTOR_AGENT_ID=agent_id,
        PREFACTOR_ENVIRONMENT_ID=environment_id,
        PREFACTOR_SPOOL_DIR=str(spool_dir),
        PREFACTOR_EXPORT_TIMEOUT="2",
        PREFACTOR_SHUTDOWN_TIMEOUT="3",
        PREFACTOR_FINISH_GRACE_SECONDS="0",
    )
    script = tmp_path / "one_shot.py"
    script.write_text(ONE_SHOT)
    ran = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0 and "script done" in ran.stdout, ran.stderr
    files = _spool_files(spool_dir)
    assert files, ran.stderr

    doctor = cli("doctor", env=env)
    waiting = re.search(r"^\[\.\.\] PF401 (\d+) span\(s\) in (\d+) file\(s\) \(.*oldest written ", doctor.stdout, re.M)
    assert waiting is not None, doctor.stdout
    assert (int(waiting[1]), int(waiting[2])) == (SPANS, len(files)), doctor.stdout
    assert f"wait for delivery in {spool_dir}" in doctor.stdout
    assert "     fix: to send them now: prefactor-otel spool send" in doctor.stdout
    shown = cli("spool", env=env)
    assert shown.returncode == 0 and f"{SPANS} span(s) in {len(files)} file(s)" in shown.stdout, shown.stdout

    down = cli("spool", "send", env=env)  # still down: nothing is lost, it says so
    assert down.returncode == 1 and "still waiting" in down.stdout, down.stdout + down.stderr
    assert len(_spool_files(spool_dir)) >= 1

    with DevServer(token="pf_outage_token", port=port, agent_id=agent_id, environment_id=environment_id) as srv:
        sent = cli("spool", "send", env=env)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert re.search(
            rf"^sent {SPANS} span\(s\) from \d+ file\(s\) to http://127\.0\.0\.1:{port}", sent.stdout, re.M
        )
        assert f"nothing left in {spool_dir}" in sent.stdout
        assert len(srv.spans()) == SPANS
        runs = srv.instances()
        assert len(runs) == 3 and all(r["status"] == "complete" for r in runs), runs
    assert _spool_files(spool_dir) == []
    after = cli("doctor", env=env)
    assert "PF401" not in after.stdout and f"spool {spool_dir}: nothing waits for delivery" in after.stdout
    assert "pf_outage_token" not in doctor.stdout + sent.stdout + sent.stderr + after.stdout


def test_spool_send_with_nothing_waiting_says_so(tmp_path: Path) -> None:
    env = _env(PREFACTOR_API_TOKEN="pf_x", PREFACTOR_SPOOL_DIR=str(tmp_path / "empty"))
    done = cli("spool", "send", env=env)
    assert done.returncode == 0 and f"nothing waits for delivery in {tmp_path / 'empty'}" in done.stdout


def test_the_exporters_refusal_names_the_variable_the_token_came_from(
    srv: DevServer, caplog: pytest.LogCaptureFixture
) -> None:
    from prefactor_otel import PrefactorSpanExporter
    from tests.spans import agent_trace, make_provider

    environ = {
        "OTEL_EXPORTER_PREFACTOR_API_TOKEN": "pf_wrong_alias_token",
        "PREFACTOR_API_URL": srv.url,
        "PREFACTOR_AGENT_ID": srv.agent_id,
        "PREFACTOR_SPOOL": "false",
    }
    exporter = PrefactorSpanExporter(environ=environ)
    provider, collector = make_provider()
    agent_trace(provider)
    exporter.export(collector.spans)
    exporter.shutdown()
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "prefactor_otel")
    assert "Check OTEL_EXPORTER_PREFACTOR_API_TOKEN and its scope" in text, text
    assert "pf_wrong_alias_token" not in caplog.text


# --------------------------------------------------------------------------------------- the demo's next step

# Started by the interpreter before the demo: makes opentelemetry-instrumentation missing, as after `pip install .`
# alone (the test extra installs it here).
HIDE_INSTRUMENTATION = textwrap.dedent(
    """
    import sys


    class _Missing:
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry.instrumentation" or name.startswith("opentelemetry.instrumentation."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None


    sys.meta_path.insert(0, _Missing())
    """
)


@pytest.mark.parametrize("installed", [True, False])
def test_the_demos_next_step_says_what_to_install_when_opentelemetry_instrument_is_missing(
    tmp_path: Path, installed: bool
) -> None:
    env = _env()
    if not installed:
        (tmp_path / "sitecustomize.py").write_text(HIDE_INSTRUMENTATION)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), env.get("PYTHONPATH")) if p)
    done = cli("demo", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    tail = done.stdout[done.stdout.index("Next step:") :]
    install = "pip install opentelemetry-instrumentation"
    assert (install in tail) is not installed, tail
    if not installed:  # before the command that needs it
        assert tail.index(install) < tail.index("opentelemetry-instrument python your_agent.py")
