import logging

import pytest

from prefactor_otel import ConfigError, PrefactorConfig, PrefactorSpanExporter
from prefactor_otel.model.ids import encode

AGENT = encode(1_700_000_000_000, 77, 1)
TOKEN = "pf_secret_token_value_123"


def test_defaults():
    cfg = PrefactorConfig.load({})
    assert cfg.api_url == "https://app.prefactorai.com"
    assert cfg.api_base == "https://app.prefactorai.com/api/v1"
    assert cfg.enabled and not cfg.api_token


def test_keyword_overrides_environment_overrides_default():
    env = {"PREFACTOR_API_URL": "https://env.example:1/api/v1/", "PREFACTOR_EXPORT_TIMEOUT": "3"}
    cfg = PrefactorConfig.load(env)
    assert cfg.api_url == "https://env.example:1" and cfg.export_timeout == 3.0
    cfg = PrefactorConfig.load(env, api_url="https://kw.example:2", export_timeout=7)
    assert cfg.api_url == "https://kw.example:2" and cfg.export_timeout == 7.0


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("PREFACTOR_EXPORT_TIMEOUT", "soon"),
        ("PREFACTOR_EXPORT_TIMEOUT", "-1"),
        ("PREFACTOR_EXPORT_TIMEOUT", "nan"),
        ("PREFACTOR_BULK_MAX_ITEMS", "0"),
        ("PREFACTOR_ENABLED", "maybe"),
        ("PREFACTOR_AGENT_ID", "agent-123"),
        ("PREFACTOR_API_URL", "ftp://x"),
        ("PREFACTOR_INSTANCE_PURPOSE", "prod"),
    ],
)
def test_invalid_values_name_the_variable(var, value):
    with pytest.raises(ConfigError) as info:
        PrefactorConfig.load({var: value})
    assert var in str(info.value)


def test_token_never_in_repr_or_describe():
    cfg = PrefactorConfig.load({"PREFACTOR_API_TOKEN": TOKEN, "PREFACTOR_AGENT_ID": AGENT})
    assert cfg.api_token.get() == TOKEN
    for text in (repr(cfg), str(cfg), cfg.describe(), repr(cfg.api_token)):
        assert TOKEN not in text


def test_no_token_warns_once_and_exporter_is_a_noop(caplog):
    caplog.set_level(logging.DEBUG, logger="prefactor_otel")
    exporter = PrefactorSpanExporter(environ={})
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "PREFACTOR_API_TOKEN" in warnings[0].getMessage()
    assert not exporter.enabled
    from opentelemetry.sdk.trace.export import SpanExportResult

    assert exporter.export([]) is SpanExportResult.SUCCESS
    exporter.shutdown()


def test_invalid_config_disables_with_one_error_not_an_exception(caplog):
    caplog.set_level(logging.DEBUG, logger="prefactor_otel")
    exporter = PrefactorSpanExporter(environ={"PREFACTOR_API_TOKEN": TOKEN, "PREFACTOR_EXPORT_TIMEOUT": "x"})
    assert not exporter.enabled
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "PREFACTOR_EXPORT_TIMEOUT" in errors[0]
    assert TOKEN not in caplog.text and TOKEN not in repr(exporter)


def test_enabled_false_is_a_kill_switch():
    exporter = PrefactorSpanExporter(environ={"PREFACTOR_API_TOKEN": TOKEN, "PREFACTOR_ENABLED": "false"})
    assert not exporter.enabled
    assert exporter.stats()["disabled_reason"]


@pytest.mark.parametrize(
    "url",
    ["http://api.example.com", "http://10.0.0.5:8080", "http://prefactor.internal/api/v1"],
)
def test_plain_http_to_a_remote_host_is_refused(url):
    with pytest.raises(ConfigError) as info:
        PrefactorConfig.load({"PREFACTOR_API_URL": url})
    assert "PREFACTOR_API_URL" in str(info.value) and "PREFACTOR_ALLOW_INSECURE" in str(info.value)
    assert PrefactorConfig.load({"PREFACTOR_API_URL": url, "PREFACTOR_ALLOW_INSECURE": "true"}).api_url


@pytest.mark.parametrize("url", ["http://127.0.0.1:8787", "http://localhost:1", "http://[::1]:9", "https://x.example"])
def test_loopback_and_https_are_allowed(url):
    assert PrefactorConfig.load({"PREFACTOR_API_URL": url}).api_url == url


def test_tls_verification_is_on_by_default():
    cfg = PrefactorConfig.load({})
    assert cfg.tls_verify is True
    assert PrefactorConfig.load({}, tls_verify=False).tls_verify is False


def test_redaction_options_as_keyword_arguments():
    def mask(path: str, value: str) -> str:
        return value.replace("hunter2", "***")

    cfg = PrefactorConfig.load({}, redact_patterns=[r"acct-\d+"], redact_keys=("x-session",), redact_callback=mask)
    assert cfg.redact_patterns == (r"acct-\d+",) and cfg.redact_keys == ("x-session",)
    assert cfg.redact_callback is mask
    with pytest.raises(ConfigError) as info:
        PrefactorConfig.load({}, redact_patterns=["(unclosed"])
    assert "redact_patterns" in str(info.value)
