"""`opentelemetry-instrument` with OTEL_TRACES_EXPORTER=prefactor and only PREFACTOR_* settings.

Each run is a real `opentelemetry-instrument python app.py` against a local server, with opentelemetry-distro
hidden or listed before or after ours (tests/instrumented.py says how).
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from importlib.metadata import distribution, entry_points
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk import _configuration as sdk_configuration

from prefactor_otel import PrefactorSpanExporter
from prefactor_otel.devserver import DevServer
from prefactor_otel.sdk.zerocode import (
    PrefactorConfigurator,
    PrefactorDistro,
    export_span_processor,
    names_prefactor,
    next_other,
)
from tests.instrumented import Distros, instrument_command, instrumented_env, run_path

TESTS_PARENT = str(Path(__file__).resolve().parent.parent)

# The app reports what the configurator built (SDK internals, read only), then runs the workload.
APP = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, {tests_parent!r})
    from opentelemetry import metrics, trace
    from tests.test_exporter_e2e import three_traces

    provider = trace.get_tracer_provider()
    processors = getattr(getattr(provider, "_active_span_processor", None), "_span_processors", ())
    readers = getattr(metrics.get_meter_provider(), "_metric_readers", ())
    report = {{
        "processors": [type(p).__name__ for p in processors],
        "exporters": [type(getattr(p, "span_exporter", getattr(p, "exporter", None))).__name__ for p in processors],
        "metric_readers": [type(getattr(r, "_exporter", r)).__name__ for r in readers],
        "env": {{k: os.environ.get(k) for k in ("OTEL_METRICS_EXPORTER", "OTEL_LOGS_EXPORTER",
                                                 "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_PYTHON_CONFIGURATOR")}},
    }}
    print("REPORT " + json.dumps(report))
    three_traces(provider)
    print("app done")
    """
)


def run_instrumented(
    tmp_path: Path, server: DevServer, distros: Distros, **env_extra: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`opentelemetry-instrument python app.py` with only PREFACTOR_* and the given OTEL_* variables set."""
    app = tmp_path / "app.py"
    app.write_text(APP.format(tests_parent=TESTS_PARENT))
    env = instrumented_env(
        tmp_path,
        server,
        distros,
        OTEL_SERVICE_NAME="autoconf-agent",
        PREFACTOR_FINISH_GRACE_SECONDS="0",
        **env_extra,
    )
    proc = subprocess.run(instrument_command(app), env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("REPORT ")), None)
    assert line is not None, proc.stdout + proc.stderr
    return proc, json.loads(line.removeprefix("REPORT "))


def assert_clean(proc: subprocess.CompletedProcess[str], token: str) -> None:
    assert proc.returncode == 0, proc.stderr
    assert "app done" in proc.stdout
    assert "Traceback" not in proc.stderr and "Failed to auto initialize" not in proc.stderr, proc.stderr
    assert "asks for Prefactor" not in proc.stderr, proc.stderr  # the failed-set-up line: only when it failed
    assert token not in proc.stdout + proc.stderr


def test_entry_points_are_registered_and_load_our_classes():
    (exporter,) = entry_points(group="opentelemetry_traces_exporter", name="prefactor")
    assert exporter.load() is PrefactorSpanExporter
    (distro,) = entry_points(group="opentelemetry_distro", name="prefactor")
    assert distro.load() is PrefactorDistro
    (configurator,) = entry_points(group="opentelemetry_configurator", name="prefactor")
    assert configurator.load() is PrefactorConfigurator


def test_only_the_traces_exporter_and_prefactor_settings_deliver_through_the_processor(tmp_path):
    from tests.test_exporter_e2e import TOKEN

    expected = _expected_spans()
    with DevServer(token=TOKEN) as server:
        proc, report = run_instrumented(
            tmp_path, server, "without-opentelemetry-distro", OTEL_TRACES_EXPORTER="prefactor"
        )
        assert_clean(proc, TOKEN)
        assert report["processors"] == ["PrefactorSpanProcessor"]
        assert report["exporters"] == ["PrefactorSpanExporter"]
        assert report["metric_readers"] == []
        assert report["env"]["OTEL_METRICS_EXPORTER"] == "none" and report["env"]["OTEL_LOGS_EXPORTER"] == "none"
        spans = server.spans()
        assert len(spans) == len(expected)
        instances = server.instances()
        assert sorted(i["status"] for i in instances) == ["complete", "complete", "failed"]
        # the resource comes from OTEL_* as usual: OTEL_SERVICE_NAME names the agent version
        assert [v["name"] for v in server.snapshot()["agent_versions"]] == ["autoconf-agent"]
        names = sorted(s["payload"]["name"] for s in spans)
        assert names == sorted(s.name for s in expected)
        # parent links survive: every non-root span's parent is a span of the same instance
        by_id = {s["id"]: s for s in spans}
        for s in spans:
            if s["payload"]["parent_span_id"] is not None:
                parent = by_id[s["parent_span_id"]]
                assert parent["payload"]["span_id"] == s["payload"]["parent_span_id"]


def test_other_exporters_keep_their_batch_processor_and_a_users_metrics_exporter_is_kept(tmp_path):
    with DevServer() as server:
        proc, report = run_instrumented(
            tmp_path,
            server,
            "without-opentelemetry-distro",
            OTEL_TRACES_EXPORTER="prefactor, console",
            OTEL_METRICS_EXPORTER="console",
        )
        assert_clean(proc, server.token)
        assert report["processors"] == ["PrefactorSpanProcessor", "BatchSpanProcessor"]
        assert report["exporters"] == ["PrefactorSpanExporter", "ConsoleSpanExporter"]
        assert report["metric_readers"] == ["ConsoleMetricExporter"]
        assert report["env"]["OTEL_METRICS_EXPORTER"] == "console" and report["env"]["OTEL_LOGS_EXPORTER"] == "none"
        assert '"name": "invoke_agent support"' in proc.stdout  # the console exporter printed spans too
        assert len(server.instances()) == 3


def test_with_opentelemetry_distro_listed_after_ours_our_set_up_wins(tmp_path):
    with DevServer() as server:
        proc, report = run_instrumented(tmp_path, server, "ours-listed-first", OTEL_TRACES_EXPORTER="prefactor")
        assert_clean(proc, server.token)
        assert report["processors"] == ["PrefactorSpanProcessor"]
        assert report["env"]["OTEL_METRICS_EXPORTER"] == "none" and report["env"]["OTEL_EXPORTER_OTLP_PROTOCOL"] is None
        assert len(server.instances()) == 3


def test_with_opentelemetry_distro_listed_first_otel_python_distro_selects_ours(tmp_path):
    with DevServer() as server:
        proc, report = run_instrumented(
            tmp_path, server, "theirs-listed-first", OTEL_TRACES_EXPORTER="prefactor", OTEL_PYTHON_DISTRO="prefactor"
        )
        assert_clean(proc, server.token)
        assert report["processors"] == ["PrefactorSpanProcessor"]
        assert report["env"]["OTEL_METRICS_EXPORTER"] == "none" and report["env"]["OTEL_LOGS_EXPORTER"] == "none"
        assert report["env"]["OTEL_PYTHON_CONFIGURATOR"] == "prefactor"
        assert len(server.instances()) == 3


def test_a_run_not_naming_prefactor_gets_the_other_distro_as_if_we_were_not_installed(tmp_path):
    with DevServer() as server:
        proc, report = run_instrumented(
            tmp_path,
            server,
            "ours-listed-first",
            OTEL_TRACES_EXPORTER="console",
            OTEL_METRICS_EXPORTER="none",
            OTEL_LOGS_EXPORTER="none",
        )
        assert_clean(proc, server.token)
        assert report["processors"] == ["BatchSpanProcessor"]
        assert report["env"]["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"  # opentelemetry-distro's default: it ran
        assert server.instances() == []


def test_a_run_that_loses_the_set_up_to_another_distro_says_so_in_one_line_after_the_traceback(tmp_path):
    """Issue 24: opentelemetry-distro listed first and OTEL_PYTHON_DISTRO unset: its OTLP defaults for metrics and
    logs fail the SDK's set-up (the OTLP gRPC exporter is not installed), every span is lost, the app exits 0."""
    with DevServer() as server:
        proc, report = run_instrumented(tmp_path, server, "theirs-listed-first", OTEL_TRACES_EXPORTER="prefactor")
        assert proc.returncode == 0 and "app done" in proc.stdout
        assert report["processors"] == [] and server.instances() == []  # nothing set up, nothing sent
    lines = proc.stderr.splitlines()
    ours = [i for i, line in enumerate(lines) if line.startswith("prefactor-otel: ")]
    assert len(ours) == 1, proc.stderr
    line = lines[ours[0]]
    assert "OTEL_TRACES_EXPORTER=prefactor asks for Prefactor" in line and "no span is exported" in line
    assert "set OTEL_PYTHON_DISTRO=prefactor" in line and "`prefactor-otel doctor`" in line
    # after OpenTelemetry's own report of the failure and its traceback: the last thing before the app's output
    failed = max(i for i, text in enumerate(lines) if text.startswith("Failed to auto initialize OpenTelemetry"))
    assert failed < ours[0] and "Requested component 'otlp_proto_grpc' not found" in lines[ours[0] - 1]
    assert server.token not in proc.stderr


def test_an_instrumentor_failing_after_the_set_up_loses_no_span_and_gets_no_such_line(tmp_path):
    """`opentelemetry-instrument` also reports "Failed to auto initialize" when an instrumentor raises, after the
    SDK was set up: the spans still flow, so the failed-set-up line must not claim otherwise."""
    with DevServer() as server:
        env = instrumented_env(
            tmp_path, server, "without-opentelemetry-distro", OTEL_TRACES_EXPORTER="prefactor", OTEL_SERVICE_NAME="x"
        )
        where = Path(env["PYTHONPATH"].split(os.pathsep)[0])
        info = where / "broken_instrumentor-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-instrumentor\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text("[opentelemetry_instrumentor]\nbroken = broken_instrumentor:It\n")
        (where / "broken_instrumentor.py").write_text("raise RuntimeError('this instrumentor is broken')\n")
        app = tmp_path / "app.py"
        app.write_text(APP.format(tests_parent=TESTS_PARENT))
        proc = subprocess.run(
            instrument_command(app), env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
        assert proc.returncode == 0 and "app done" in proc.stdout, proc.stderr
        assert "Failed to auto initialize OpenTelemetry" in proc.stderr and "this instrumentor is broken" in proc.stderr
        assert "asks for Prefactor" not in proc.stderr, proc.stderr
        assert len(server.instances()) == 3  # the SDK was set up before the instrumentor failed: spans flow


@pytest.mark.parametrize(
    ("value", "named"),
    [("prefactor", True), (" console , prefactor ", True), ("console", False), ("prefactorx", False), ("", False)],
)
def test_names_prefactor_splits_as_the_sdk_does(value: str, named: bool) -> None:
    assert names_prefactor(value) is named
    assert names_prefactor(None) is False


def test_next_other_skips_our_own_entry_point():
    other = next_other("opentelemetry_distro", PrefactorDistro)
    assert other is None or other.value != "prefactor_otel.sdk.zerocode:PrefactorDistro"


def test_export_span_processor_wraps_only_our_exporter():
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    from prefactor_otel import PrefactorSpanProcessor

    ours = export_span_processor(PrefactorSpanExporter(environ={}))
    theirs = export_span_processor(ConsoleSpanExporter())
    try:
        assert type(ours) is PrefactorSpanProcessor
        assert type(theirs) is BatchSpanProcessor
    finally:
        ours.shutdown()
        theirs.shutdown()


class _RecordedSetUp:
    """Stands in for the SDK's `_initialize_components` (the configurator's one call into the SDK) and records
    the keyword arguments; `old_sdk` gives it the signature of opentelemetry-sdk < 1.40."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, old_sdk: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []

        def before_1_40(auto_instrumentation_version: str | None = None, **kwargs: Any) -> None:
            self.calls.append({"auto_instrumentation_version": auto_instrumentation_version, **kwargs})

        def since_1_40(auto_instrumentation_version: str | None = None, export_span_processor: Any = None) -> None:
            self.calls.append(
                {
                    "auto_instrumentation_version": auto_instrumentation_version,
                    "export_span_processor": export_span_processor,
                }
            )

        monkeypatch.setattr(sdk_configuration, "_initialize_components", before_1_40 if old_sdk else since_1_40)
        for name in ("OTEL_TRACES_EXPORTER", "OTEL_PYTHON_CONFIGURATOR", "OTEL_CONFIG_FILE"):
            monkeypatch.delenv(name, raising=False)


def test_configurator_gives_the_sdk_our_processor_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    sdk = _RecordedSetUp(monkeypatch)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "prefactor")
    PrefactorConfigurator().configure(auto_instrumentation_version="9")
    assert sdk.calls == [{"auto_instrumentation_version": "9", "export_span_processor": export_span_processor}]


def test_configurator_on_an_sdk_before_1_40_warns_and_still_sets_up(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sdk = _RecordedSetUp(monkeypatch, old_sdk=True)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "prefactor")
    PrefactorConfigurator().configure(auto_instrumentation_version="9")
    assert sdk.calls == [{"auto_instrumentation_version": "9"}]
    assert "without PrefactorSpanProcessor" in caplog.text


def test_configurator_not_named_hands_over_to_the_next_installed_configurator(monkeypatch: pytest.MonkeyPatch) -> None:
    distribution("opentelemetry-distro")  # the test extra installs it: its configurator is the one handed over to
    sdk = _RecordedSetUp(monkeypatch)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    PrefactorConfigurator().configure(auto_instrumentation_version="9")
    assert sdk.calls == [{"auto_instrumentation_version": "9", "export_span_processor": None}]
    # chosen by name, the configurator keeps the run even when prefactor is not named, with the SDK's own
    # processor choice: recognising our exporter would import it, which a run without it must not pay
    sdk.calls.clear()
    monkeypatch.setenv("OTEL_PYTHON_CONFIGURATOR", "prefactor")
    PrefactorConfigurator().configure(auto_instrumentation_version="9")
    assert sdk.calls == [{"auto_instrumentation_version": "9", "export_span_processor": None}]


# Run under `opentelemetry-instrument`: at exit, the modules of ours the run imported, and whether the console
# exporter printed the app's span (so the SDK was set up).
_MODULES_AT_EXIT_APP = textwrap.dedent(
    """
    import atexit, sys
    from opentelemetry import trace

    with trace.get_tracer("probe").start_as_current_span("console-only"):
        pass
    atexit.register(lambda: print("OURS " + " ".join(sorted(m for m in sys.modules if m.startswith("prefactor_otel")))))
    """
)
# What `opentelemetry-instrument` may load of ours in a run that does not name prefactor: the distro and the
# configurator (sdk/zerocode.py) and the package roots they sit in; never the exporter, pipeline or transport.
_LIGHT = {"prefactor_otel", "prefactor_otel._version", "prefactor_otel.sdk", "prefactor_otel.sdk.zerocode"}


@pytest.mark.parametrize("distros", ["without-opentelemetry-distro", "ours-listed-first"])
def test_a_console_run_under_opentelemetry_instrument_does_not_import_the_exporter(
    tmp_path: Path, distros: Distros
) -> None:
    app = tmp_path / "app.py"
    app.write_text(_MODULES_AT_EXIT_APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFACTOR_"))}
    env.update(
        PYTHONPATH=run_path(tmp_path, distros),
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        PREFACTOR_API_TOKEN="pf_set_but_not_named",  # a Prefactor set-up in the environment changes nothing
    )
    proc = subprocess.run(instrument_command(app), env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert '"name": "console-only"' in proc.stdout, proc.stdout + proc.stderr  # the console exporter ran
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("OURS")]
    ours = set(line.split()[1:])
    assert "prefactor_otel.sdk.exporter" not in ours
    assert ours <= _LIGHT, sorted(ours - _LIGHT)


def _expected_spans():
    from tests.spans import make_provider
    from tests.test_exporter_e2e import three_traces

    provider, collector = make_provider()
    three_traces(provider)
    return collector.spans
