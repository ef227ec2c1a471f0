"""The deadline-aware network layer over TLS (production is HTTPS): small TLS servers on 127.0.0.1, written here.

The certificate is made for the test run by the `openssl` command (skipped without it). Calls run in threads
joined with a generous guard; assertions are about behaviour, never timings.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from prefactor_otel.config.options import PrefactorConfig
from prefactor_otel.transport.client import BulkTransport, encode_item

GUARD_S = 30.0
Behaviour = Callable[[ssl.SSLSocket, threading.Event], None]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost"]
    command += ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    return cert, key


class TlsServer:
    """Accepts TLS connections on 127.0.0.1 and hands each to `behave` in its own thread until stop()."""

    def __init__(self, certificate: tuple[Path, Path], behave: Behaviour) -> None:
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(*certificate)
        self._behave = behave
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # the accept loop notices stop() within this
        self.port: int = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                raw, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._connections.append(raw)
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(GUARD_S)
        with contextlib.suppress(OSError):
            self._behave(self._context.wrap_socket(raw, server_side=True), self._stopping)

    def stop(self) -> None:
        self._stopping.set()
        self._listener.close()
        for connection in self._connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def tls_server(certificate: tuple[Path, Path], behave: Behaviour) -> Iterator[TlsServer]:
    server = TlsServer(certificate, behave)
    try:
        yield server
    finally:
        server.stop()


def read_request(conn: ssl.SSLSocket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("client closed")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length"))
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("client closed")
        body += chunk
    return body


def answer_422(conn: ssl.SSLSocket, stopping: threading.Event) -> None:
    while not stopping.is_set():
        read_request(conn)
        body = b'{"status":"error","code":"validation_errors","message":"read over TLS"}'
        conn.sendall(b"HTTP/1.1 422 Unprocessable Entity\r\nContent-Type: application/json\r\n")
        conn.sendall(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


def trickle_503(conn: ssl.SSLSocket, stopping: threading.Event) -> None:
    read_request(conn)
    answer = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 100\r\n\r\n" + b"x" * 100
    for byte in answer:  # one byte (one TLS record) every half second: each read gets something in time
        if stopping.wait(0.5):
            return
        conn.sendall(bytes([byte]))


def black_hole(conn: ssl.SSLSocket, stopping: threading.Event) -> None:
    stopping.wait(GUARD_S * 2)  # reads nothing, answers nothing


def _transport(server: TlsServer, certificate: tuple[Path, Path]) -> BulkTransport:
    config = PrefactorConfig.load(
        environ={}, api_url=f"https://localhost:{server.port}", api_token="pf_test", ca_bundle=str(certificate[0])
    )
    return BulkTransport(config, sdk_header="prefactor-otel-tests")


ITEM = encode_item({"_type": "agent_instances/register", "idempotency_key": "tls-test-key-0001"})


def _run(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(call()), daemon=True)
    thread.start()
    return thread, out


def test_answers_are_read_over_tls_on_a_reused_connection(certificate: tuple[Path, Path]) -> None:
    with tls_server(certificate, answer_422) as server:
        transport = _transport(server, certificate)
        big = ITEM[:-1] + b',"pad":"' + b"x" * (3 << 20) + b'"}'  # written in slices through the TLS socket
        for item in (big, ITEM):
            result = transport.send_bulk([item], ["tls-test-key-0001"], time.monotonic() + GUARD_S)
            assert (result.error, result.code, result.message) == ("rejected", "validation_errors", "read over TLS")
        transport.close()


def test_a_trickled_answer_over_tls_ends_at_the_deadline(certificate: tuple[Path, Path]) -> None:
    with tls_server(certificate, trickle_503) as server:
        transport = _transport(server, certificate)
        thread, out = _run(lambda: transport.send_bulk([ITEM], ["tls-test-key-0001"], time.monotonic() + 1))
        thread.join(GUARD_S)
        assert not thread.is_alive(), "the trickled answer outlived the deadline by far"
        assert out[0].error == "timeout"


def test_cap_deadline_ends_a_tls_write_to_a_server_that_never_reads(certificate: tuple[Path, Path]) -> None:
    with tls_server(certificate, black_hole) as server:
        transport = _transport(server, certificate)
        big = ITEM[:-1] + b',"pad":"' + b"x" * (48 << 20) + b'"}'
        thread, out = _run(lambda: transport.send_bulk([big], ["tls-test-key-0001"], time.monotonic() + 120))
        thread.join(1.0)  # let it block in the write (the socket buffers fill long before 48 MB)
        transport.cap_deadline(time.monotonic() + 0.5)
        thread.join(GUARD_S)
        assert not thread.is_alive(), "the write ignored the lowered deadline"
        assert out[0].error == "timeout"
