"""`prefactor-otel doctor` through the real CLI, and `check()` on the exporter and the processor.

Every doctor run is a subprocess with a controlled environment: this process's, minus every OTEL_* and PREFACTOR_*
variable, plus a PYTHONPATH that fixes which OTel distros are installed and in which order (tests/instrumented.py),
and, where a finding needs one, a stand-in distribution (a metadata directory with entry points, and a module) placed
before site-packages. API checks run against a local DevServer (faults injected where a status is needed) or a
port nothing listens on. Where a finding says spans would be lost, the acceptance test runs the real
`opentelemetry-instrument python app.py` on the same environment and checks that the doctor fails exactly when
the spans do not arrive.
"""

from __future__ import annotations

import ast
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from prefactor_otel import CheckResult, PrefactorSpanExporter
from prefactor_otel.devserver import DevServer, Fault
from prefactor_otel.model import ids
from tests.instrumented import Distros, instrument_command, run_path
from tests.spans import exporter_for, processor_for

REPO = Path(__file__).resolve().parent.parent
SOURCES = [
    REPO / "src" / "prefactor_otel" / name
    for name in ("tools/doctor.py", "transport/api_check.py", "tools/instrument_check.py", "tools/spool_report.py")
]


def base_env(tmp_path: Path, distros: Distros = "without-opentelemetry-distro", **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFACTOR_"))}
    env["PYTHONPATH"] = run_path(tmp_path, distros)
    env.update(extra)
    return env


def server_env(server: DevServer, **extra: str) -> dict[str, str]:
    return {
        "PREFACTOR_API_URL": server.url,
        "PREFACTOR_API_TOKEN": server.token,
        "PREFACTOR_AGENT_ID": server.agent_id,
        "PREFACTOR_ENVIRONMENT_ID": server.environment_id,
        **extra,
    }


def doctor(env: dict[str, str], *options: str, console_script: bool = False) -> tuple[int, str]:
    command = (
        [os.path.join(os.path.dirname(sys.executable), "prefactor-otel"), "doctor"]
        if console_script
        else [sys.executable, "-m", "prefactor_otel", "doctor"]
    )
    proc = subprocess.run([*command, *options], env=env, capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def fake_distribution(env: dict[str, str], name: str, entry_points: str, module: str = "") -> None:
    """A stand-in installed distribution, listed before site-packages: its metadata, entry points and a module."""
    where = Path(env["PYTHONPATH"].split(os.pathsep)[0])
    info = where / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)
    if module:
        (where / f"{name}.py").write_text(module)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def codes(output: str) -> set[str]:
    return set(re.findall(r"^\[(?:!!|\.\.)\] (PF\d{3}) ", output, re.MULTILINE))


def problems(output: str) -> set[str]:
    return set(re.findall(r"^\[!!\] (PF\d{3}) ", output, re.MULTILINE))


# ---------------------------------------------------------------------------------------------------- API checks


def test_good_ids_pass_through_the_console_script_and_the_token_is_never_printed(tmp_path: Path) -> None:
    token = "pf_doctor_secret_token"
    with DevServer(token=token) as server:
        code, out = doctor(
            base_env(tmp_path, **server_env(server), OTEL_TRACES_EXPORTER="prefactor"), console_script=True
        )
    assert code == 0, out
    assert f"[ok] GET {server.url}/api/v1/ping -> HTTP 200" in out
    assert f"[ok] agent id {server.agent_id} exists" in out
    assert "[ok] opentelemetry-instrument will use the Prefactor configurator" in out
    assert "no problem found" in out and problems(out) == set()
    assert token not in out


def test_an_invented_agent_id_is_a_problem(tmp_path: Path) -> None:
    invented = ids.encode(int(time.time() * 1000), 7, 12345)
    with DevServer() as server:
        code, out = doctor(base_env(tmp_path, **server_env(server, PREFACTOR_AGENT_ID=invented)))
    assert code == 1, out
    assert f"[!!] PF311 agent id {invented} does not exist (an id of another account or server?" in out


def test_the_agent_id_of_a_previous_server_is_a_problem(tmp_path: Path) -> None:
    with DevServer() as before:
        stale = before.agent_id
    with DevServer() as server:
        code, out = doctor(base_env(tmp_path, **server_env(server, PREFACTOR_AGENT_ID=stale)))
    assert code == 1 and f"PF311 agent id {stale} does not exist" in out, out


def test_a_rejected_token_is_a_problem_and_the_ids_are_not_checked(tmp_path: Path) -> None:
    with DevServer(token="pf_the_right_token") as server:
        code, out = doctor(base_env(tmp_path, **server_env(server, PREFACTOR_API_TOKEN="pf_a_wrong_token")))
    assert code == 1, out
    assert f"[!!] PF303 GET {server.url}/api/v1/ping -> HTTP 401: 127.0.0.1:{server.port} rejects" in out
    assert "[..] PF302 agent and environment ids not checked: the token was rejected" in out
    assert "pf_a_wrong_token" not in out and "pf_the_right_token" not in out


def test_a_refused_port_names_the_host_and_the_cause(tmp_path: Path) -> None:
    port = free_port()
    env = base_env(tmp_path, PREFACTOR_API_URL=f"http://127.0.0.1:{port}", PREFACTOR_API_TOKEN="pf_x_token")
    code, out = doctor(env)
    assert code == 1, out
    assert f"[!!] PF301 GET http://127.0.0.1:{port}/api/v1/ping failed: cannot reach 127.0.0.1:{port}: " in out
    assert "connection refused" in out and "PF302" in out


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (Fault(path="/api/v1/ping", method="GET", status=503, times=-1), "[!!] PF304 GET"),
        (Fault(path="/api/v1/agent/", method="GET", status=403, times=-1), "[..] PF312 agent id"),
        (Fault(path="/api/v1/agent/", method="GET", status=500, times=-1), "[..] PF313 agent id"),
        (Fault(path="/api/v1/environment/", method="GET", status=401, times=-1), "[..] PF316 environment id"),
        (
            Fault(
                path="/api/v1/environment/",
                method="GET",
                status=404,
                times=-1,
                body='{"status": "error", "code": "not_found", "message": "environment not found"}',
            ),
            "[!!] PF315 environment id",
        ),
    ],
)
def test_what_the_api_answers_to_each_read(tmp_path: Path, fault: Fault, expected: str) -> None:
    with DevServer() as server:
        server.add_fault(fault)
        code, out = doctor(base_env(tmp_path, **server_env(server)))
    assert expected in out, out
    assert code == (1 if "[!!]" in expected else 0), out
    if "PF304" in expected:  # a failed ping leaves a 404 for an id meaningless: the ids are not read
        assert "[..] PF302 agent and environment ids not checked: the ping answered HTTP 503" in out


def test_the_environment_id_is_checked_and_a_server_without_environment_reads_is_said(tmp_path: Path) -> None:
    with DevServer() as server:
        code, out = doctor(base_env(tmp_path, **server_env(server)))
        assert code == 0, out
        assert f"[ok] environment id {server.environment_id} exists" in out, out
        invented = ids.encode(int(time.time() * 1000), ids.extract_partition(server.agent_id), 12345)
        (tmp_path / "b").mkdir()
        code, out = doctor(base_env(tmp_path / "b", **server_env(server, PREFACTOR_ENVIRONMENT_ID=invented)))
        assert code == 1 and f"[!!] PF315 environment id {invented} does not exist" in out, out
        server.add_fault(
            Fault(
                path="/api/v1/environment/",
                method="GET",
                status=404,
                times=-1,
                body='{"status": "error", "code": "not_found", "message": "no such endpoint"}',
            )
        )
        (tmp_path / "c").mkdir()
        code, out = doctor(base_env(tmp_path / "c", **server_env(server)))
    assert code == 0, out
    assert (
        f"[..] PF317 environment id {server.environment_id} not checked: the server offers no environment read" in out
    )


def test_ids_of_two_accounts_are_named_and_a_missing_agent_id_is_a_note(tmp_path: Path) -> None:
    with DevServer() as server:
        other_account = ids.encode(int(time.time() * 1000), ids.extract_partition(server.agent_id) ^ 1, 99)
        code, out = doctor(base_env(tmp_path, **server_env(server, PREFACTOR_ENVIRONMENT_ID=other_account)))
        # the partition note says why; the server's read then shows the environment is not this account's
        assert "[..] PF314 environment id" in out, out
        assert code == 1 and f"[!!] PF315 environment id {other_account} does not exist" in out, out
        (tmp_path / "b").mkdir()
        env = base_env(tmp_path / "b", **server_env(server))
        del env["PREFACTOR_AGENT_ID"]
        code, out = doctor(env)
    assert code == 0 and "[..] PF310 PREFACTOR_AGENT_ID is not set" in out, out


# ------------------------------------------------------------------------------------------------- configuration


def test_every_bad_value_is_named_and_api_checks_say_they_were_skipped(tmp_path: Path) -> None:
    env = base_env(tmp_path, PREFACTOR_EXPORT_TIMEOUT="soon", PREFACTOR_MAX_QUEUED_SPANS="-3")
    code, out = doctor(env)
    assert code == 1, out
    assert "[!!] PF101 configuration: PREFACTOR_EXPORT_TIMEOUT" in out
    assert "[!!] PF101 configuration: PREFACTOR_MAX_QUEUED_SPANS" in out
    assert "[!!] PF102 PREFACTOR_API_TOKEN is missing" in out
    assert "[..] PF300 API checks skipped: the configuration has problems" in out


def test_a_disabled_exporter_is_a_note(tmp_path: Path) -> None:
    with DevServer() as server:
        code, out = doctor(base_env(tmp_path, **server_env(server, PREFACTOR_ENABLED="false")))
    assert code == 0 and "[..] PF103 PREFACTOR_ENABLED is false" in out, out


def test_a_traces_exporter_entry_point_that_is_not_ours_is_a_problem(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    fake_distribution(
        env,
        "impostor",
        "[opentelemetry_traces_exporter]\nprefactor = impostor:Exporter\n",
        "from opentelemetry.sdk.trace.export import ConsoleSpanExporter as Exporter\n",
    )
    code, out = doctor(env)
    assert code == 1 and "[!!] PF104 not true: entry point opentelemetry_traces_exporter:prefactor" in out, out


def test_multiple_problems_are_reported_together(tmp_path: Path) -> None:
    env = base_env(
        tmp_path,
        PREFACTOR_EXPORT_TIMEOUT="soon",
        OTEL_SDK_DISABLED="true",
        OTEL_TRACES_EXPORTER="prefactor",
        OTEL_PYTHON_CONFIGURATOR="nope",
        OTEL_LOGS_EXPORTER="nope",
    )
    code, out = doctor(env)
    assert code == 1, out
    assert {"PF101", "PF102", "PF201", "PF210"} <= problems(out), out
    assert "PF300" in codes(out) and "4 problem(s) found" in out


# --------------------------------------------------------------------------------------- opentelemetry-instrument

BROKEN_MODULE = "raise ImportError('this plugin is broken')\n"
OTHER_MODULE = """
from opentelemetry.instrumentation.distro import BaseDistro


class OtherDistro(BaseDistro):
    def _configure(self, **kwargs):
        pass


class NotTheSdks:
    def configure(self, **kwargs):
        pass
"""


@pytest.mark.parametrize(
    ("distros", "env_extra", "plugin", "expected"),
    [
        ("without-opentelemetry-distro", {"OTEL_SDK_DISABLED": "true"}, None, "[!!] PF201 OTEL_SDK_DISABLED=true"),
        ("without-opentelemetry-distro", {"OTEL_TRACES_EXPORTER": ""}, None, "[..] PF202 OTEL_TRACES_EXPORTER is not"),
        ("without-opentelemetry-distro", {"OTEL_TRACES_EXPORTER": "console"}, None, "[!!] PF203 OTEL_TRACES_EXPORTER"),
        (
            "without-opentelemetry-distro",
            {},
            ("[opentelemetry_distro]\nbroken = otel_plugin:Distro\n", BROKEN_MODULE),
            "[!!] PF205 distro 'broken'",
        ),
        ("theirs-listed-first", {"OTEL_PYTHON_DISTRO": "nope"}, None, "[!!] PF206 OTEL_PYTHON_DISTRO=nope"),
        ("theirs-listed-first", {}, None, "[!!] PF207 another OTel distro is installed (distro)"),
        ("ours-listed-first", {}, None, "[!!] PF207 another OTel distro is installed (distro)"),
        ("theirs-listed-first", {"OTEL_PYTHON_DISTRO": "distro"}, None, "[..] PF208 OTEL_PYTHON_DISTRO=distro"),
        (
            "without-opentelemetry-distro",
            {"OTEL_PYTHON_DISTRO": "other"},
            ("[opentelemetry_distro]\nother = otel_plugin:OtherDistro\n", OTHER_MODULE),
            "[..] PF209 distro 'other'",
        ),
        ("without-opentelemetry-distro", {"OTEL_PYTHON_CONFIGURATOR": "nope"}, None, "[!!] PF210 OTEL_PYTHON_CONF"),
        ("theirs-listed-first", {}, None, "[!!] PF211 configurator 'configurator' runs (listed first)"),
        ("ours-listed-first", {"OTEL_PYTHON_DISTRO": "distro"}, None, "[!!] PF212 2 configurators are installed"),
        (
            "without-opentelemetry-distro",
            {"OTEL_PYTHON_CONFIGURATOR": "broken"},
            ("[opentelemetry_configurator]\nbroken = otel_plugin:Configurator\n", BROKEN_MODULE),
            "[!!] PF213 configurator 'broken' cannot be loaded",
        ),
        (
            "without-opentelemetry-distro",
            {"OTEL_PYTHON_CONFIGURATOR": "custom"},
            ("[opentelemetry_configurator]\ncustom = otel_plugin:NotTheSdks\n", OTHER_MODULE),
            "[..] PF214 configurator 'custom'",
        ),
        (
            "without-opentelemetry-distro",
            {"OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"},
            None,
            "[!!] PF216 OTEL_METRICS_EXPORTER=otlp: Unsupported OTLP protocol 'carrier-pigeon'",
        ),
        (
            "without-opentelemetry-distro",
            {"OTEL_METRICS_EXPORTER": "otlp"},
            None,
            "[!!] PF217 OTEL_METRICS_EXPORTER=otlp: exporter 'otlp_proto_grpc' is not installed",
        ),
        (
            "without-opentelemetry-distro",
            {"OTEL_LOGS_EXPORTER": "broken"},
            ("[opentelemetry_logs_exporter]\nbroken = otel_plugin:Exporter\n", BROKEN_MODULE),
            "[!!] PF218 OTEL_LOGS_EXPORTER=broken: exporter 'broken' cannot be loaded",
        ),
        ("without-opentelemetry-distro", {"OTEL_PYTHON_ID_GENERATOR": "nope"}, None, "[!!] PF219 OTEL_PYTHON_ID"),
    ],
)
def test_each_zero_code_finding(
    tmp_path: Path, distros: Distros, env_extra: dict[str, str], plugin: tuple[str, str] | None, expected: str
) -> None:
    env = base_env(tmp_path, distros, OTEL_TRACES_EXPORTER="prefactor", PREFACTOR_API_TOKEN="pf_x_token")
    env.update(env_extra)
    if not env["OTEL_TRACES_EXPORTER"]:
        del env["OTEL_TRACES_EXPORTER"]
    if plugin is not None:
        fake_distribution(env, "otel_plugin", *plugin)
    env["PREFACTOR_API_URL"] = f"http://127.0.0.1:{free_port()}"  # API checks fail fast; not what is tested here
    code, out = doctor(env)
    assert expected in out, out
    assert code == 1, out  # the refused port at least


def test_the_issue_set_up_names_each_variable_and_its_fix(tmp_path: Path) -> None:
    """Issue 14: OTEL_TRACES_EXPORTER=prefactor, metrics and logs unset, opentelemetry-distro listed first."""
    env = base_env(tmp_path, "theirs-listed-first", OTEL_TRACES_EXPORTER="prefactor", PREFACTOR_API_TOKEN="pf_x_tok")
    env["PREFACTOR_API_URL"] = f"http://127.0.0.1:{free_port()}"
    code, out = doctor(env)
    assert code == 1, out
    for variable in ("OTEL_METRICS_EXPORTER", "OTEL_LOGS_EXPORTER"):
        assert (
            f"[!!] PF217 {variable}=otlp, the default of distro 'distro': exporter 'otlp_proto_grpc' is not installed"
            in out
        )
        assert f"     fix: set {variable}=none, or install the package providing it" in out
    assert "set OTEL_PYTHON_DISTRO=prefactor" in out


def test_doctor_flags_an_sdk_that_cannot_take_our_processor(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk import _configuration as sdk_configuration

    from prefactor_otel.tools.instrument_check import instrument_findings

    env = {"OTEL_TRACES_EXPORTER": "prefactor", "OTEL_PYTHON_DISTRO": "prefactor"}
    assert [f for f in instrument_findings(env) if f.level == "problem"] == []

    def before_1_40(auto_instrumentation_version: str | None = None) -> None:  # the SDK's signature before 1.40
        raise AssertionError("the doctor must not set anything up")

    monkeypatch.setattr(sdk_configuration, "_initialize_components", before_1_40)
    assert "PF215" in {f.code for f in instrument_findings(env) if f.level == "problem"}


def test_missing_opentelemetry_instrumentation_is_a_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefactor_otel.tools import instrument_check

    monkeypatch.setattr(instrument_check, "find_spec", lambda name: None)
    found = instrument_check.instrument_findings({"OTEL_TRACES_EXPORTER": "prefactor"})
    assert [f.code for f in found if f.level == "problem"] == ["PF204"]


# --------------------------------------------------------------------------------- doctor vs opentelemetry-instrument

APP = """
from opentelemetry import trace

with trace.get_tracer("doctor-acceptance").start_as_current_span("handle request"):
    pass
print("app done")
"""


BROKEN_DISTRO = ("[opentelemetry_distro]\nbroken = otel_plugin:Distro\n", BROKEN_MODULE)
BROKEN_CONFIGURATOR = ("[opentelemetry_configurator]\nbroken = otel_plugin:Configurator\n", BROKEN_MODULE)
BROKEN_LOGS_EXPORTER = ("[opentelemetry_logs_exporter]\nbroken = otel_plugin:Exporter\n", BROKEN_MODULE)


@pytest.mark.parametrize(
    ("distros", "env_extra", "plugin", "finding"),
    [
        ("theirs-listed-first", {}, None, "PF217"),  # the issue: opentelemetry-distro's otlp defaults
        ("without-opentelemetry-distro", {"OTEL_METRICS_EXPORTER": "otlp"}, None, "PF217"),
        ("without-opentelemetry-distro", {"OTEL_PYTHON_CONFIGURATOR": "nope"}, None, "PF210"),
        ("without-opentelemetry-distro", {"OTEL_SDK_DISABLED": "true"}, None, "PF201"),
        ("without-opentelemetry-distro", {"OTEL_TRACES_EXPORTER": "console"}, None, "PF203"),
        (
            "without-opentelemetry-distro",
            {"OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"},
            None,
            "PF216",
        ),
        ("without-opentelemetry-distro", {"OTEL_PYTHON_ID_GENERATOR": "nope"}, None, "PF219"),
        ("without-opentelemetry-distro", {}, BROKEN_DISTRO, "PF205"),
        ("without-opentelemetry-distro", {"OTEL_PYTHON_CONFIGURATOR": "broken"}, BROKEN_CONFIGURATOR, "PF213"),
        ("without-opentelemetry-distro", {"OTEL_LOGS_EXPORTER": "broken"}, BROKEN_LOGS_EXPORTER, "PF218"),
        ("theirs-listed-first", {"OTEL_PYTHON_DISTRO": "prefactor"}, None, None),
        ("without-opentelemetry-distro", {}, None, None),
        ("without-opentelemetry-distro", {"OTEL_TRACES_EXPORTER": "console,prefactor"}, None, None),
    ],
)
def test_doctor_fails_exactly_when_opentelemetry_instrument_loses_the_spans(
    tmp_path: Path,
    distros: Distros,
    env_extra: dict[str, str],
    plugin: tuple[str, str] | None,
    finding: str | None,
) -> None:
    code, out, delivered = doctor_then_instrument(tmp_path, distros, env_extra, plugin)
    if finding is None:
        assert code == 0 and delivered == 1, out
    else:
        assert code == 1 and finding in problems(out), out
        assert delivered == 0


def test_a_set_up_that_works_by_package_order_only_fails_the_doctor(tmp_path: Path) -> None:
    """The one deliberate exception: with opentelemetry-distro installed after ours, this run delivers, but which
    distro runs is an order nothing defines (a reinstall can flip it), so the doctor asks for OTEL_PYTHON_DISTRO."""
    code, out, delivered = doctor_then_instrument(tmp_path, "ours-listed-first", {}, None)
    assert delivered == 1
    assert code == 1 and problems(out) == {"PF207"}, out


def doctor_then_instrument(
    tmp_path: Path, distros: Distros, env_extra: dict[str, str], plugin: tuple[str, str] | None
) -> tuple[int, str, int]:
    """The doctor's exit code and output, then how many runs `opentelemetry-instrument python app.py` delivered,
    on the same environment."""
    with DevServer() as server:
        env = base_env(tmp_path, distros, **server_env(server), OTEL_TRACES_EXPORTER="prefactor")
        env.update(env_extra, PREFACTOR_FINISH_GRACE_SECONDS="0")
        if plugin is not None:
            fake_distribution(env, "otel_plugin", *plugin)
        code, out = doctor(env)
        app = tmp_path / "app.py"
        app.write_text(APP)
        proc = subprocess.run(
            instrument_command(app), env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
        assert proc.returncode == 0 and "app done" in proc.stdout, proc.stderr  # the application never notices
        return code, out + proc.stderr, len(server.instances())


# ------------------------------------------------------------------------------------------- programmatic check()


def test_check_is_ok_against_a_local_server_for_the_exporter_and_the_processor() -> None:
    with DevServer() as server:
        exporter = exporter_for(server)
        processor = processor_for(server)
        try:
            result = exporter.check()
            assert isinstance(result, CheckResult) and result.ok and bool(result), str(result)
            assert result.problems == () and f"agent id {server.agent_id} exists" in str(result)
            assert processor.check(timeout=30).ok
        finally:
            exporter.shutdown()
            processor.shutdown()


def test_check_finds_a_bad_token_an_unknown_agent_and_a_refused_port() -> None:
    with DevServer() as server:
        bad_token = exporter_for(server, api_token="pf_not_the_token")
        unknown = exporter_for(server, agent_id=ids.encode(int(time.time() * 1000), 3, 5))
        refused = exporter_for(server, api_url=f"http://127.0.0.1:{free_port()}")
        try:
            result = bad_token.check()
            assert not result and result.problems[0].startswith("[!!] PF303"), str(result)
            assert "pf_not_the_token" not in str(result)
            result = unknown.check()
            assert not result and result.problems[0].startswith("[!!] PF311"), str(result)
            result = refused.check()
            assert not result and "connection refused" in result.problems[0], str(result)
        finally:
            for exporter in (bad_token, unknown, refused):
                exporter.shutdown()


def test_check_never_raises_for_an_exporter_that_sends_nothing() -> None:
    disabled = PrefactorSpanExporter(environ={})  # no token
    result = disabled.check()
    assert not result and result.problems == ("[!!] PF300 the exporter sends nothing: no API token",)
    with DevServer() as server:
        exporter = exporter_for(server)
        exporter.shutdown()
        result = exporter.check()
    assert not result and "shut down" in result.problems[0]


def test_check_is_bounded_by_its_timeout() -> None:
    with DevServer() as server:
        server.add_fault(Fault(path="/api/v1/ping", method="GET", black_hole=True, times=-1))
        exporter = exporter_for(server)
        results: list[CheckResult] = []
        worker = threading.Thread(target=lambda: results.append(exporter.check(timeout=0.5)), daemon=True)
        worker.start()
        worker.join(60)  # a safety limit against a hang, not a timing assertion
        exporter.shutdown()
    assert results, "check() did not return"
    assert not results[0] and "timed out" in results[0].problems[0], str(results[0])


# ------------------------------------------------------------------------------------------------------ the README


def test_the_readme_troubleshooting_section_lists_every_finding_code() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    emitted = set()
    for source in SOURCES:
        emitted |= set(re.findall(r'"(PF\d{3})"', source.read_text()))
    assert len(emitted) > 30
    missing = sorted(code for code in emitted if code not in section)
    assert missing == [], f"README Troubleshooting lacks {missing}"


def test_every_finding_with_a_code_says_what_to_do() -> None:
    """Each `Finding(level, text, code, fix)` built anywhere with a code carries a fix (the doctor prints it on the
    line under the finding); checked on the source, so a finding only a rare environment produces is held too."""
    seen: set[str] = set()
    lacking: list[str] = []
    for source in SOURCES:
        for node in ast.walk(ast.parse(source.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Finding"):
                continue
            keywords = {k.arg: k.value for k in node.keywords}
            code = node.args[2] if len(node.args) > 2 else keywords.get("code")
            if code is None:
                continue  # ok / info lines: facts, nothing to do
            fix = node.args[3] if len(node.args) > 3 else keywords.get("fix")
            label = ast.unparse(code)
            seen.add(label)
            if fix is None or (isinstance(fix, ast.Constant) and not str(fix.value).strip()):
                lacking.append(f"{source.name}:{node.lineno} {label}")
    assert len(seen) > 30 and lacking == [], lacking


def test_the_fix_is_printed_under_each_finding(tmp_path: Path) -> None:
    port = free_port()
    env = base_env(tmp_path, "theirs-listed-first", OTEL_TRACES_EXPORTER="prefactor")
    env.update(PREFACTOR_API_URL=f"http://127.0.0.1:{port}", OTEL_EXPORTER_PREFACTOR_EXPORT_TIMEOUT="x")
    code, out = doctor(env)
    assert code == 1
    lines = out.splitlines()
    coded = [i for i, line in enumerate(lines) if re.match(r"^\[(?:!!|\.\.)\] PF\d{3} ", line)]
    assert {"PF101", "PF102", "PF207", "PF211", "PF217", "PF300"} <= codes(out), out
    for i in coded:
        assert lines[i + 1].startswith("     fix: ") and len(lines[i + 1]) > 15, (lines[i], out)
    # the three the issue named
    assert "[!!] PF102 PREFACTOR_API_TOKEN is missing" in out
    assert "     fix: set PREFACTOR_API_TOKEN (or OTEL_EXPORTER_PREFACTOR_API_TOKEN)" in out
    (tmp_path / "2").mkdir()
    env = base_env(tmp_path / "2", PREFACTOR_API_URL=f"http://127.0.0.1:{port}", PREFACTOR_API_TOKEN="pf_x")
    code, out = doctor(env)
    assert "PF301" in problems(out)
    assert "     fix: is the server running? For the local one: `prefactor-otel serve`" in out


def test_a_refused_token_names_the_variable_it_came_from(tmp_path: Path) -> None:
    with DevServer(token="pf_the_right_token") as server:
        env = base_env(tmp_path, **server_env(server))
        del env["PREFACTOR_API_TOKEN"]
        env["OTEL_EXPORTER_PREFACTOR_API_TOKEN"] = "pf_a_wrong_token"
        code, out = doctor(env)
    assert code == 1
    assert "rejects the token in OTEL_EXPORTER_PREFACTOR_API_TOKEN" in out, out
    assert "     fix: set OTEL_EXPORTER_PREFACTOR_API_TOKEN to a valid, active token" in out
    assert "pf_a_wrong_token" not in out and "pf_the_right_token" not in out


# ------------------------------------------------------------------------------------------- doctor's options


def test_quiet_prints_only_what_needs_attention_with_the_same_exit_status(tmp_path: Path) -> None:
    with DevServer() as server:
        good = base_env(tmp_path, **server_env(server), OTEL_TRACES_EXPORTER="prefactor")
        code, out = doctor(good, "--quiet")
        assert (code, out) == (0, "no problem found\n")  # nothing to look at: one line
        loud_code, loud = doctor({**good, "PREFACTOR_API_TOKEN": "pf_wrong_token"})
        code, out = doctor({**good, "PREFACTOR_API_TOKEN": "pf_wrong_token"}, "--quiet")
    assert loud_code == code == 1
    assert "[ok]" in loud and "[ok]" not in out and "[info]" not in out.lower()
    assert problems(out) == problems(loud) and "PF303" in problems(out)
    assert "     fix: " in out and out.rstrip().endswith("problem(s) found")
    assert "pf_wrong_token" not in out


def test_json_holds_every_finding_and_its_fix_and_never_the_token(tmp_path: Path) -> None:
    import json

    token = "pf_doctor_json_secret"
    with DevServer(token=token) as server:
        env = base_env(tmp_path, **server_env(server, PREFACTOR_AGENT_ID=ids.encode(int(time.time() * 1000), 7, 1)))
        text_code, text = doctor(env)
        code, out = doctor(env, "--json")
    assert code == text_code == 1
    report = json.loads(out)  # the whole output is one document: nothing else is printed
    found = report["findings"]
    assert report["problems"] == sum(1 for f in found if f["level"] == "problem") == len(problems(text))
    assert {f["code"] for f in found if f["level"] == "problem"} == problems(text)
    assert all(f["fix"] for f in found if f["code"])
    assert any(f["level"] == "ok" and "ping" in f["text"] for f in found)
    assert token not in out


def test_no_api_sends_no_request_and_says_the_api_was_not_checked(tmp_path: Path) -> None:
    with DevServer(token="pf_doctor_no_api") as server:
        env = base_env(tmp_path, **server_env(server, PREFACTOR_API_TOKEN="pf_not_this_one"))
        code, out = doctor(env, "--no-api")
        assert server.requests == []  # not one request reached the server
        api_code, api_out = doctor(env)
    assert code == 0, out  # the configuration itself is fine
    assert "API checks skipped (--no-api)" in out and not {c for c in codes(out) if c.startswith("PF3")}
    assert api_code == 1 and "PF303" in problems(api_out)  # without it, the refused token is found


def test_facts_have_their_own_mark_and_every_line_marked_worth_reading_has_a_fix(tmp_path: Path) -> None:
    with DevServer() as server:
        code, out = doctor(base_env(tmp_path, **server_env(server)))  # OTEL_TRACES_EXPORTER unset: a PF202 note
    assert code == 0, out
    lines = out.splitlines()
    assert any(line.startswith("[--] opentelemetry-sdk ") for line in lines)  # a fact, not a note
    assert any(line.startswith("[--] spool ") and "nothing waits" in line for line in lines)
    worth_reading = [i for i, line in enumerate(lines) if line.startswith(("[..]", "[!!]"))]
    assert worth_reading and all(lines[i + 1].startswith("     fix: ") for i in worth_reading), out
