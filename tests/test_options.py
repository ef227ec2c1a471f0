"""Options with a signature, `OTEL_EXPORTER_PREFACTOR_*` aliases, and what `repr` shows after a configuration error
(issue 14, items 6 and 7).

The signatures, docstrings, `help(PrefactorConfig)` and the README's configuration table are checked against
`OPTIONS`, the one list of options, so none of them can drift. The aliases are tested through the real
`opentelemetry-instrument` (its `--help`, and a run with `--exporter_prefactor_*` flags against a local server).
"""

from __future__ import annotations

import inspect
import logging
import os
import pydoc
import re
import subprocess
from pathlib import Path

import pytest

from prefactor_otel import PrefactorSpanExporter, PrefactorSpanProcessor
from prefactor_otel.config.environment_variables import ALIASES
from prefactor_otel.config.options import OPTIONS, ConfigError, PrefactorConfig, alias_of
from prefactor_otel.devserver import DevServer
from tests.instrumented import instrument_command, instrumented_env
from tests.spans import wait_for

README = Path(__file__).resolve().parents[1] / "README.md"
TOKEN = "pf_secret_token_do_not_log_123"
EXPORTER_ONLY = {"config", "http_client", "environ"}
PROCESSOR_ONLY = {
    "exporter",
    "max_queue_size",
    "schedule_delay_millis",
    "max_export_batch_size",
    "export_timeout_millis",
}


def keyword_names(cls: type) -> set[str]:
    return {name for name in inspect.signature(cls.__init__).parameters if name != "self"}


# ------------------------------------------------------------------ signatures and docs


def test_the_exporter_and_the_processor_take_every_option_as_a_parameter():
    assert keyword_names(PrefactorSpanExporter) == set(OPTIONS) | EXPORTER_ONLY
    assert keyword_names(PrefactorSpanProcessor) == set(OPTIONS) | EXPORTER_ONLY | PROCESSOR_ONLY
    for cls in (PrefactorSpanExporter, PrefactorSpanProcessor):
        parameters = inspect.signature(cls.__init__).parameters
        for name in OPTIONS:
            assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY, (cls, name)
            assert parameters[name].default is None, (cls, name)  # None: the environment, else the default


@pytest.mark.parametrize("target", [PrefactorSpanExporter.__init__, PrefactorSpanProcessor.__init__, PrefactorConfig])
def test_each_option_is_documented_with_its_variables_and_default(target):
    text = pydoc.render_doc(target, renderer=pydoc.plaintext)
    for name, option in OPTIONS.items():
        entry = re.search(rf"^[\s|]*{name}: (.+)\n[\s|]*Environment: (\S+) \(or (\S+)\)\. Default: (.+)\.$", text, re.M)
        assert entry is not None, (target, name)
        assert entry[1].startswith(option.doc[:40]) and entry[2] == option.env and entry[3] == alias_of(option.env)
    assert "Default: https://app.prefactorai.com." in text and "Default: 500." in text  # defaults are the real ones


def test_a_misspelt_keyword_is_a_type_error_at_the_call_site():
    with pytest.raises(TypeError, match="api_tokn"):
        PrefactorSpanExporter(api_tokn="x", environ={})  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="agentid"):
        PrefactorSpanProcessor(agentid="x", environ={})  # type: ignore[call-arg]
    exporter = PrefactorSpanExporter(environ={})
    with pytest.raises(TypeError, match="api_token"):  # would be ignored silently: refused instead
        PrefactorSpanProcessor(exporter, api_token="x")
    exporter.shutdown()


def test_keywords_spread_from_a_dict_still_work_and_auto_configuration_never_raises():
    options = {"api_url": "http://127.0.0.1:9", "api_token": "t", "spool": False, "environ": {}}
    processor = PrefactorSpanProcessor(**options, export_timeout="2")
    assert processor.exporter.enabled and processor.exporter._config.export_timeout == 2.0
    processor.shutdown()
    # As opentelemetry-instrument builds it: no argument, whatever the environment holds.
    exporter = PrefactorSpanExporter(environ={"PREFACTOR_API_TOKEN": "t", "PREFACTOR_MAX_WAIT_SECONDS": "soon"})
    assert not exporter.enabled
    exporter.shutdown()


def test_the_readme_configuration_table_lists_every_option_and_only_those():
    text = README.read_text()
    section = text[text.index("## Configuration") : text.index("## How spans map")]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    envs = {env for row in rows for env in re.findall(r"`(PREFACTOR_[A-Z_]+)`", row.split("|")[1])}
    keywords = {kw for row in rows for kw in re.findall(r"`([a-z_]+)`", row.split("|")[2])}
    assert envs == {option.env for option in OPTIONS.values()}
    assert keywords == set(OPTIONS)
    for row in rows:  # each row's variables and keywords belong together
        row_envs = re.findall(r"`(PREFACTOR_[A-Z_]+)`", row.split("|")[1])
        row_keywords = re.findall(r"`([a-z_]+)`", row.split("|")[2])
        assert [OPTIONS[kw].env for kw in row_keywords] == row_envs, row


# ------------------------------------------------------------------ aliases


def test_an_alias_is_read_and_beats_the_prefactor_variable_with_one_warning_naming_both(caplog):
    caplog.set_level(logging.WARNING, logger="prefactor_otel")
    config = PrefactorConfig.load({"OTEL_EXPORTER_PREFACTOR_EXPORT_TIMEOUT": "3"})
    assert config.export_timeout == 3.0 and not caplog.records
    config = PrefactorConfig.load({"OTEL_EXPORTER_PREFACTOR_API_TOKEN": TOKEN, "PREFACTOR_API_TOKEN": "older"})
    assert config.api_token.get() == TOKEN
    (record,) = caplog.records
    assert "OTEL_EXPORTER_PREFACTOR_API_TOKEN" in record.getMessage() and "PREFACTOR_API_TOKEN " in record.getMessage()
    assert TOKEN not in caplog.text and "older" not in caplog.text
    caplog.clear()
    same = PrefactorConfig.load({"OTEL_EXPORTER_PREFACTOR_AGENT_NAME": "a ", "PREFACTOR_AGENT_NAME": "a"})
    assert same.agent_name == "a" and not caplog.records  # the same value twice is no conflict
    keyword = PrefactorConfig.load({"OTEL_EXPORTER_PREFACTOR_EXPORT_TIMEOUT": "3"}, export_timeout=4)
    assert keyword.export_timeout == 4.0  # keyword > alias


@pytest.mark.parametrize(
    ("environ", "keywords", "named"),
    [
        ({"OTEL_EXPORTER_PREFACTOR_EXPORT_TIMEOUT": "soon"}, {}, "OTEL_EXPORTER_PREFACTOR_EXPORT_TIMEOUT: "),
        ({"OTEL_EXPORTER_PREFACTOR_API_URL": "http://example.com"}, {}, "OTEL_EXPORTER_PREFACTOR_API_URL: plain"),
        ({"PREFACTOR_API_URL": "http://example.com"}, {}, "PREFACTOR_API_URL: plain"),
        ({}, {"api_url": "http://example.com"}, "api_url: plain"),
    ],
)
def test_an_error_names_the_variable_or_keyword_the_user_set(environ, keywords, named):
    with pytest.raises(ConfigError) as error:
        PrefactorConfig.load(environ, **keywords)
    assert str(error.value).startswith(named)


def test_every_alias_is_registered_with_opentelemetry_instrument():
    help_text = subprocess.run(
        [*instrument_command(Path("app.py"))[:1], "--help"], capture_output=True, text=True, timeout=120
    ).stdout
    flags = set(re.findall(r"--(exporter_prefactor_[a-z_]+)", help_text))
    assert flags == {name.removeprefix("OTEL_").lower() for name in ALIASES}
    assert {alias_of(option.env) for option in OPTIONS.values()} | {"OTEL_EXPORTER_PREFACTOR_LOG_LEVEL"} == set(ALIASES)


APP = """
from opentelemetry import trace

tracer = trace.get_tracer("flags")
with tracer.start_as_current_span("handle request"):
    with tracer.start_as_current_span("chat m", attributes={"gen_ai.operation.name": "chat"}):
        pass
print("app done", flush=True)
"""


def test_opentelemetry_instrument_flags_configure_the_exporter_and_spans_arrive(tmp_path):
    with DevServer(token=TOKEN) as srv:
        app = tmp_path / "app.py"
        app.write_text(APP)
        env = instrumented_env(tmp_path, srv, "without-opentelemetry-distro", OTEL_TRACES_EXPORTER="prefactor")
        # Only flags point the run at the server: the environment's PREFACTOR_* say something else (a flag wins).
        env.update(PREFACTOR_API_URL="http://127.0.0.1:9", PREFACTOR_API_TOKEN="stale")
        command = instrument_command(app)
        flags = [
            f"--exporter_prefactor_api_url={srv.url}",
            f"--exporter_prefactor_api_token={TOKEN}",
            f"--exporter_prefactor_agent_id={srv.agent_id}",
            "--exporter_prefactor_finish_grace_seconds=0",
            f"--exporter_prefactor_spool_dir={tmp_path / 'spool'}",
        ]
        proc = subprocess.run(
            [command[0], *flags, *command[1:]], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
        assert proc.returncode == 0 and "app done" in proc.stdout, proc.stderr
        assert "Traceback" not in proc.stderr
        names = wait_for(lambda: len(srv.spans()) == 2 and sorted(span["payload"]["name"] for span in srv.spans()))
        assert names == ["chat m", "handle request"]
        assert [instance["status"] for instance in srv.instances()] == ["complete"]
    conflicts = [line for line in proc.stderr.splitlines() if "are both set" in line]
    assert len(conflicts) == 2 and any("OTEL_EXPORTER_PREFACTOR_API_TOKEN" in line for line in conflicts)
    where = [line for line in proc.stderr.splitlines() if line.startswith("prefactor-otel: spans go to")]
    assert where == [
        f"prefactor-otel: spans go to {srv.api_url} for agent {srv.agent_id} (environment {srv.environment_id}, "
        f"live spans agent, spool {tmp_path / 'spool'})"
    ]
    assert TOKEN not in proc.stdout + proc.stderr and "stale" not in proc.stderr


# ------------------------------------------------------------------ repr after a configuration error


def test_repr_after_a_configuration_error_shows_what_was_set_masked_and_the_error():
    exporter = PrefactorSpanExporter(
        api_url="https://user:pw@example.com/",
        api_token=TOKEN,
        export_timeout=7,
        environ={
            "OTEL_EXPORTER_PREFACTOR_AGENT_ID": "agent-1",
            "PREFACTOR_SPAN_FILTER": "genai",
            "OTEL_EXPORTER_PREFACTOR_LIVE_SPANS": " ",  # blank: the PREFACTOR_* variable is what was set
            "PREFACTOR_LIVE_SPANS": "all",
        },
    )
    text = repr(exporter)
    assert not exporter.enabled
    assert "api_url='https://***@example.com/'" in text and f"api_token=set ({len(TOKEN)} chars)" in text
    assert "agent_id='agent-1'" in text and "export_timeout=7" in text and "span_filter='genai'" in text
    assert "live_spans='all'" in text
    assert 'error="api_url: the URL must not contain user info' in text
    assert "https://app.prefactorai.com" not in text  # not the defaults of the disabled stand-in
    assert TOKEN not in text and "pw" not in text
    exporter.shutdown()


def test_repr_of_a_working_exporter_is_unchanged_in_substance():
    exporter = PrefactorSpanExporter(api_url="http://127.0.0.1:9", api_token=TOKEN, spool=False, environ={})
    text = repr(exporter)
    assert "endpoint=http://127.0.0.1:9/api/v1" in text and "disabled=None" in text and "error=" not in text
    assert TOKEN not in text
    exporter.shutdown()


def test_the_alias_module_holds_only_its_names():
    import prefactor_otel.config.environment_variables as module

    names = {name for name in dir(module) if name.startswith("OTEL_")}
    assert names == set(ALIASES) and all(getattr(module, name) == name for name in names)
    assert os.environ.get("OTEL_EXPORTER_PREFACTOR_API_TOKEN") is None  # nothing set by importing it
