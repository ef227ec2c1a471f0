"""Configuration safety: the plain-http refusal judges the parsed host (never a prefix of the string), URLs with user
info, a query or a fragment are refused, and a token HTTP cannot carry is refused without being echoed."""

from __future__ import annotations

import contextlib
import logging
import socket

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from prefactor_otel import ConfigError, PrefactorConfig, PrefactorSpanExporter
from prefactor_otel.config.values import is_loopback_host
from prefactor_otel.devserver import DevServer
from tests.spans import agent_trace

TOKEN = "pf_live_token_7Hq2ZsW9"


@pytest.mark.parametrize(
    "url",
    [
        # the bypass forms of issue 10: each looked like 127.0.0.1 to the old prefix check
        "http://evil?@127.0.0.1",
        "http://evil#@127.0.0.1",
        "http://127.0.0.1.evil.example",
        "http://127.evil.example",
        # and relatives: a name is never loopback, whatever it resolves to today
        "http://127.0.0.1.nip.io:8080",
        "http://localhost.evil.example",
        "http://127.1",
        "http://[::ffff:10.0.0.1]",
        "http://10.0.0.5:8080",
    ],
)
def test_plain_http_to_anything_but_a_loopback_host_is_refused(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        PrefactorConfig.load({"PREFACTOR_API_URL": url})
    assert "PREFACTOR_API_URL" in str(info.value)


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("http://evil?@127.0.0.1", "query"),
        ("http://evil#@127.0.0.1", "fragment"),
        ("https://api.example?x=1", "query"),
        ("https://api.example/#top", "fragment"),
        ("https://api.example/?", "query"),
        ("http://user:hunter2pw@127.0.0.1", "user info"),
        ("https://user:hunter2pw@api.example", "user info"),
        ("http://evil\\@127.0.0.1", "user info"),
    ],
)
def test_user_info_query_and_fragment_are_refused_even_with_allow_insecure(url: str, complaint: str) -> None:
    for allow_insecure in ("false", "true"):
        with pytest.raises(ConfigError) as info:
            PrefactorConfig.load({"PREFACTOR_API_URL": url, "PREFACTOR_ALLOW_INSECURE": allow_insecure})
        message = str(info.value)
        assert "PREFACTOR_API_URL" in message and complaint in message
        assert "hunter2pw" not in message  # never echo a password from the user info


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8787",
        "http://127.3.4.5",
        "http://localhost:1",
        "http://localhost.:1",
        "http://LOCALHOST:1",
        "http://[::1]:9",
        "http://[::ffff:127.0.0.1]:9",
        "https://api.example/api/v1",
    ],
)
def test_loopback_addresses_and_https_are_allowed(url: str) -> None:
    assert PrefactorConfig.load({"PREFACTOR_API_URL": url}).api_url == url.removesuffix("/api/v1")


def test_loopback_is_an_ip_literal_or_the_name_localhost() -> None:
    assert all(is_loopback_host(host) for host in ("127.0.0.1", "127.255.0.9", "::1", "::ffff:127.0.0.1", "localhost"))
    assert not any(
        is_loopback_host(host) for host in ("127.0.0.1.evil.example", "127.evil.example", "evil", "::ffff:10.0.0.1")
    )


def test_a_config_built_directly_is_checked_too() -> None:
    with pytest.raises(ConfigError):
        PrefactorConfig(api_url="http://evil?@127.0.0.1")
    with pytest.raises(ConfigError):
        PrefactorConfig.load({}).replace(api_url="http://127.evil.example")


def _non_loopback_address() -> str | None:
    """An address of this machine other than loopback, or None. The UDP connect only picks a route: no packet."""
    candidates = []
    with contextlib.suppress(OSError):
        candidates.append(socket.gethostbyname(socket.gethostname()))
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))
        candidates.append(probe.getsockname()[0])
    except OSError:
        pass
    finally:
        probe.close()
    for address in candidates:
        if not address.startswith("127.") and address != "0.0.0.0":
            return address
    return None


def test_a_listener_on_a_non_loopback_address_never_receives_the_token() -> None:
    address = _non_loopback_address()
    if address is None:
        # No such address here: the configuration must refuse the forms that would reach one.
        for url in ("http://192.0.2.1:8080", "http://192.0.2.1:8080?@127.0.0.1", "http://192.0.2.1:8080#@127.0.0.1"):
            with pytest.raises(ConfigError):
                PrefactorConfig.load({"PREFACTOR_API_URL": url, "PREFACTOR_API_TOKEN": TOKEN})
        return
    with DevServer(token=TOKEN, host=address) as listener:
        base = f"http://{address}:{listener.port}"
        for url in (base, f"{base}?@127.0.0.1", f"{base}#@127.0.0.1", f"{base}/?@127.0.0.1:1"):
            exporter = PrefactorSpanExporter(
                environ={},
                api_url=url,
                api_token=TOKEN,
                agent_id=listener.agent_id,
                environment_id=listener.environment_id,
                finish_grace_seconds=0,
                spool=False,
                export_timeout=2,
                shutdown_timeout=2,
            )
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            agent_trace(provider)
            provider.shutdown()
            assert not exporter.enabled, url
        assert listener.requests == []  # not one request, so never an Authorization header


@pytest.mark.parametrize(
    "token", ["pf_live_\nabc123xyz", "pf_live_\x00abc123xyz", "pf_live_ abc123xyz", "pf_live_\u00e9abc123xyz"]
)
def test_a_token_http_cannot_carry_is_refused_without_being_echoed(
    token: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # root: every record of every logger reaches caplog
    for name in ("httpx", "httpcore", "prefactor_otel"):
        caplog.set_level(logging.DEBUG, logger=name)
    with pytest.raises(ConfigError) as info:
        PrefactorConfig.load({"PREFACTOR_API_TOKEN": token})
    assert "PREFACTOR_API_TOKEN" in str(info.value)
    with DevServer(token="pf_live_abc123xyz") as server:
        exporter = PrefactorSpanExporter(
            environ={
                "PREFACTOR_API_URL": server.url,
                "PREFACTOR_API_TOKEN": token,
                "PREFACTOR_AGENT_ID": server.agent_id,
                "PREFACTOR_ENVIRONMENT_ID": server.environment_id,
                "PREFACTOR_SPOOL": "false",
                "PREFACTOR_EXPORT_TIMEOUT": "2",
            }
        )
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        agent_trace(provider)
        provider.shutdown()
        assert server.requests == []
    assert not exporter.enabled
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and "PREFACTOR_API_TOKEN" in errors[0].getMessage()
    secret_parts = ("abc123xyz", token.strip())
    for record in caplog.records:
        text = record.getMessage() + repr(record.args)
        assert not any(part in text for part in secret_parts), record.getMessage()
    assert not any(part in repr(exporter) for part in secret_parts)
