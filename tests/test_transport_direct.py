"""Our own client's requests go straight to its transport (no httpx.Client layer); a caller-supplied client's still
go through that client. Both send the same request head, keep their connection, and read the same answer. A raw
socket server on 127.0.0.1 records every request head and the connection it came on.
"""

from __future__ import annotations

import json
import socketserver
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import zstandard

from prefactor_otel.config.options import PrefactorConfig
from prefactor_otel.transport.client import BulkTransport
from prefactor_otel.transport.wire import encode_item

TOKEN = "pf_direct_transport_token"
KEY = "direct-transport-key-0001"


class _Recorder(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.heads: list[tuple[int, str, dict[str, str], bytes]] = []  # (client port, request line, headers, body)
        self.raw_heads: list[tuple[str, list[str]]] = []  # (request line, header lines as sent, in order)


class _Handler(socketserver.StreamRequestHandler):
    server: _Recorder

    def handle(self) -> None:
        for _ in range(100):  # bounded: requests on one kept-alive connection
            line = self.rfile.readline(65537).decode("latin-1").strip()
            if not line:
                return
            headers: dict[str, str] = {}
            lines: list[str] = []
            for _ in range(100):
                raw = self.rfile.readline(65537).decode("latin-1")
                if raw in ("\r\n", "\n", ""):
                    break
                lines.append(raw.rstrip("\r\n"))
                name, _, value = raw.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = self.rfile.read(int(headers.get("content-length", "0")))
            self.server.heads.append((self.client_address[1], line, headers, body))
            self.server.raw_heads.append((line, lines))
            if line.startswith("POST"):
                answer = json.dumps({"status": "success", "outputs": {KEY: {"status": "success"}}}).encode()
            else:
                answer = b'{"status":"success","details":{}}'
            self.wfile.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(answer)
                + answer
            )


@contextmanager
def recorder() -> Iterator[_Recorder]:
    server = _Recorder()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _transport(server: _Recorder, client: httpx.Client | None = None) -> BulkTransport:
    url = f"http://127.0.0.1:{server.server_address[1]}"
    config = PrefactorConfig.load(environ={}, api_url=url, api_token=TOKEN, agent_id="01m8jn3da5t0rktjptrj0v9sn5wdqv1r")
    return BulkTransport(config, sdk_header="prefactor-otel-tests", client=client)


def _exchange(transport: BulkTransport) -> None:
    """A bulk POST large enough to be compressed, then a GET with a query string; both answered."""
    item = encode_item({"_type": "agent_instances/register", "idempotency_key": KEY, "pad": "x" * 4000})
    result = transport.send_bulk([item], [KEY], time.monotonic() + 10)
    assert result.error is None and result.outcomes[KEY].status == "success"
    read = transport.get("/agent_instance/some-id?include=spans", time.monotonic() + 10)
    assert read.status == 200 and read.body == b'{"status":"success","details":{}}'


def test_our_own_client_sends_the_request_head_and_body_it_always_did_on_one_connection() -> None:
    with recorder() as server:
        transport = _transport(server)
        _exchange(transport)
        transport.close()
    (port_post, post_line, post, body), (port_get, get_line, get, _) = server.heads
    assert post_line == "POST /api/v1/bulk HTTP/1.1"
    assert get_line == "GET /api/v1/agent_instance/some-id?include=spans HTTP/1.1"
    assert port_post == port_get  # the connection was kept and reused
    for headers in (post, get):
        assert headers["host"] == f"127.0.0.1:{server.server_address[1]}"
        assert headers["authorization"] == f"Bearer {TOKEN}"
        assert headers["x-prefactor-sdk"] == headers["user-agent"] == "prefactor-otel-tests"
        assert headers["accept-encoding"] == "identity"
    assert post["content-encoding"] == "zstd" and "content-encoding" not in get
    assert int(post["content-length"]) == len(body)
    items = json.loads(zstandard.ZstdDecompressor().decompress(body))["items"]
    assert [item["idempotency_key"] for item in items] == [KEY]


def test_the_request_head_is_line_for_line_what_httpx_writes_for_the_same_content() -> None:
    """Our own client's requests are built from headers made once per encoding (`stream=`, no header work per
    request): the same header lines in the same order as `httpx.Request(content=...)` writes for the same method,
    target, headers and body (a compressed POST, a POST under the compression threshold, a GET)."""
    with recorder() as server:
        transport = _transport(server)
        small = encode_item({"_type": "agent_instances/finish", "idempotency_key": KEY})
        assert transport.send_bulk([small], [KEY], time.monotonic() + 10).error is None
        _exchange(transport)
        transport.close()
        ours = list(server.raw_heads)
        assert len(ours) == 3
        plain = httpx.HTTPTransport()
        origin = f"http://127.0.0.1:{server.server_address[1]}"
        for (line, _), (_, _, headers, body) in zip(ours, list(server.heads), strict=True):
            method, target, _ = line.split(" ")
            encoding = headers.get("content-encoding")
            sent = transport._encoded_headers[encoding] if encoding else transport._headers
            content = body if method == "POST" else None
            plain.handle_request(httpx.Request(method, origin + target, content=content, headers=sent)).read()
        plain.close()
    assert server.raw_heads[3:] == ours
    assert [lines[0].split(":")[0] for _, lines in ours] == ["Host"] * 3
    assert [lines[-1].split(":")[0] for _, lines in ours] == ["Content-Length", "Content-Length", "User-Agent"]


def test_a_caller_supplied_client_still_carries_every_request_with_its_own_settings() -> None:
    seen: list[str] = []
    with recorder() as server:
        client = httpx.Client(headers={"X-Caller": "kept"}, event_hooks={"request": [lambda r: seen.append(r.method)]})
        transport = _transport(server, client)
        _exchange(transport)
        transport.close()
        client.close()
    assert seen == ["POST", "GET"]  # both went through the caller's client
    for _, _, headers, _ in server.heads:
        assert headers["x-caller"] == "kept"
        assert headers["authorization"] == f"Bearer {TOKEN}"
