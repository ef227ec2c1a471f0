"""Proxies from the environment: a SOCKS5 proxy works (a real one, written here, on 127.0.0.1), and a proxy the
client cannot use is refused with one error naming the variable and the fix, while the spans wait on disk and
export() never reports SUCCESS for spans that went nowhere."""

from __future__ import annotations

import logging
import select
import socket
import socketserver
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export import SpanExportResult

from prefactor_otel import PrefactorSpanExporter
from prefactor_otel.devserver import DevServer
from prefactor_otel.tools.doctor import run_doctor
from prefactor_otel.transport.answers import UnusableProxy, usable_proxy
from tests.spans import agent_trace, make_provider, server_options

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


class _Socks5(socketserver.BaseRequestHandler):
    """RFC 1928, no authentication, CONNECT only, to loopback only; relays until either side closes."""

    server: _Socks5Server

    def _read(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.request.recv(size - len(data))
            if not chunk:
                raise ConnectionError("client went away")
            data += chunk
        return data

    def handle(self) -> None:
        version, methods = self._read(2)
        self._read(methods)
        if version != 5:
            return
        self.request.sendall(b"\x05\x00")  # no authentication
        _, command, _, address_type = self._read(4)
        if address_type == 1:
            host = socket.inet_ntoa(self._read(4))
        elif address_type == 3:
            host = self._read(self._read(1)[0]).decode()
        else:
            host = socket.inet_ntop(socket.AF_INET6, self._read(16))
        (port,) = struct.unpack("!H", self._read(2))
        if command != 1 or host not in ("127.0.0.1", "localhost"):
            self.request.sendall(b"\x05\x02\x00\x01" + bytes(6))  # not allowed
            return
        upstream = socket.create_connection((host, port), timeout=10)
        self.server.connects.append((host, port))
        self.request.sendall(b"\x05\x00\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", 0))
        with upstream:
            sockets = [self.request, upstream]
            while True:
                readable, _, _ = select.select(sockets, [], [], 10)
                if not readable:
                    return
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (upstream if sock is self.request else self.request).sendall(data)


class _Socks5Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Socks5)
        self.connects: list[tuple[str, int]] = []


@pytest.fixture
def socks5() -> Iterator[_Socks5Server]:
    server = _Socks5Server()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def no_proxy_set(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (*PROXY_VARIABLES, "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "prefactor_otel" and r.levelno >= logging.ERROR]


def test_a_socks5_proxy_from_all_proxy_carries_the_requests(
    srv: DevServer, socks5: _Socks5Server, no_proxy_set: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    no_proxy_set.setenv("ALL_PROXY", f"socks5://127.0.0.1:{socks5.server_address[1]}")
    provider, collector = make_provider()
    agent_trace(provider)
    exporter = PrefactorSpanExporter(**server_options(srv), spool=False, finish_grace_seconds=0)
    assert exporter.enabled, repr(exporter)
    assert exporter.export(collector.spans) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert len(srv.spans()) == 4
    port = int(srv.url.rsplit(":", 1)[1].split("/")[0])
    assert ("127.0.0.1", port) in socks5.connects  # through the proxy, not around it


@pytest.mark.parametrize(
    ("variable", "value", "why"),
    [
        ("HTTP_PROXY", "::bad::", "not a URL"),
        ("ALL_PROXY", "gopher://127.0.0.1:1", "scheme 'gopher'"),
        ("http_proxy", "http://user:s3cret-pass@", "no host"),
    ],
)
def test_an_unusable_proxy_is_one_error_and_the_spans_wait_on_disk(
    srv: DevServer,
    no_proxy_set: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    variable: str,
    value: str,
    why: str,
) -> None:
    caplog.set_level(logging.INFO, logger="prefactor_otel")
    no_proxy_set.setenv(variable, value)
    spool_dir = tmp_path / "spool"
    provider, collector = make_provider()
    agent_trace(provider)
    exporter = PrefactorSpanExporter(**server_options(srv), spool_dir=str(spool_dir), finish_grace_seconds=0)
    assert exporter.export(collector.spans) is SpanExportResult.FAILURE  # the spans went nowhere
    assert exporter.force_flush(2_000) is False
    exporter.shutdown()
    errors = _errors(caplog)
    assert len(errors) == 1, errors
    assert variable in errors[0] and why in errors[0], errors[0]
    assert "NO_PROXY" in errors[0] and "socks5://" in errors[0]  # the fix
    assert str(spool_dir) in errors[0]
    assert "s3cret-pass" not in caplog.text
    assert srv.requests == []
    stats = exporter.stats()
    assert stats["spans_spooled"] == 4 and stats["spans_dropped"] == 0 and stats["spans_queued"] == 0, stats

    # Fixed: a later process sends them, each once.
    no_proxy_set.delenv(variable)
    good = PrefactorSpanExporter(**server_options(srv), spool_dir=str(spool_dir), finish_grace_seconds=0)
    assert good.force_flush(10_000)
    good.shutdown()
    assert len(srv.spans()) == 4
    assert [i["status"] for i in srv.instances()] == ["complete"]


def test_an_unusable_proxy_without_a_spool_counts_the_spans_dropped(
    srv: DevServer, no_proxy_set: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="prefactor_otel")
    no_proxy_set.setenv("HTTPS_PROXY", "::bad::")
    no_proxy_set.setenv("HTTP_PROXY", "::bad::")
    provider, collector = make_provider()
    agent_trace(provider)
    exporter = PrefactorSpanExporter(**server_options(srv), spool=False, finish_grace_seconds=0)
    assert exporter.export(collector.spans) is SpanExportResult.FAILURE
    exporter.shutdown()
    stats = exporter.stats()
    assert stats["dropped_by_reason"] == {"proxy": 4}, stats
    errors = _errors(caplog)
    assert len(errors) == 1 and "PREFACTOR_SPOOL is off" in errors[0], errors


def test_doctor_names_an_unusable_proxy(srv: DevServer, no_proxy_set: pytest.MonkeyPatch) -> None:
    no_proxy_set.setenv("HTTP_PROXY", "::bad::")
    lines: list[str] = []
    environ = {
        "PREFACTOR_API_URL": srv.url,
        "PREFACTOR_API_TOKEN": srv.token,
        "PREFACTOR_AGENT_ID": srv.agent_id,
        "PREFACTOR_ENVIRONMENT_ID": srv.environment_id,
    }
    assert run_doctor(environ, lines.append) == 1
    text = "\n".join(lines)
    assert "HTTP_PROXY" in text and "not a URL" in text, text


def test_an_http_client_that_cannot_be_built_never_reports_success(
    srv: DevServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_certificate = tmp_path / "ca.pem"
    not_a_certificate.write_text("not a certificate\n")
    provider, collector = make_provider()
    agent_trace(provider)
    exporter = PrefactorSpanExporter(**server_options(srv), ca_bundle=str(not_a_certificate))
    assert not exporter.enabled
    assert exporter.export(collector.spans) is SpanExportResult.FAILURE  # the spans went nowhere
    exporter.shutdown()
    errors = _errors(caplog)
    assert len(errors) == 1 and "cannot create the HTTP client (SSLError" in errors[0], errors


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("http://[bad", "is not a host name"),
        ("http://proxy:99999", "port 99999 is out of range"),
        ("socks4://proxy:1080", "scheme 'socks4'"),
        ("http://user:pw-123@", "no host"),
    ],
)
def test_what_makes_a_proxy_unusable_is_named_and_a_password_never_shown(value: str, why: str) -> None:
    with pytest.raises(UnusableProxy) as raised:
        usable_proxy("HTTPS_PROXY", value)
    assert why in str(raised.value) and "HTTPS_PROXY=" in str(raised.value)
    assert "pw-123" not in str(raised.value)


@pytest.mark.parametrize(
    "value", ["proxy.internal:3128", "https://proxy:3128", "socks5h://127.0.0.1:1080", "http://u:p@[::1]:3128"]
)
def test_a_usable_proxy_is_taken_as_given(value: str) -> None:
    assert usable_proxy("ALL_PROXY", value) == (value if "://" in value else "http://" + value)
