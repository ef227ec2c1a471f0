"""The OTLP/HTTP application's own bounds, in this process: uvicorn serving `OtlpHttpApp` on a thread, in front of a
real `Gateway` (its own directory) pointed at a real local server, with bounds small enough to reach: two requests
handled at once, half a second for a body. Raw sockets hold requests open mid-body, as slow clients do.

Also the incremental inflater alone: gzip with several members, zlib's deflate, data after a deflate stream, and a
bomb cut off at the limit.
"""

from __future__ import annotations

import gzip
import socket
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from prefactor_otel.devserver import DevServer
from prefactor_otel.gateway.http_app import Inflater, OtlpHttpApp, Refusal
from prefactor_otel.gateway.server import bind_http
from prefactor_otel.gateway.service import Gateway
from prefactor_otel.gateway.settings import GatewaySettings
from tests.gateway_run import INGRESS_TOKEN, bearer
from tests.spans import wait_for
from tests.test_gateway_http import PROTOBUF, arrived, request_bytes, sdk_trace, trace_hex


class AppServer:
    """uvicorn serving the app on a thread, on a free port of 127.0.0.1."""

    def __init__(self, app: OtlpHttpApp) -> None:
        self._socket = bind_http("127.0.0.1", 0)
        self.port = int(self._socket.getsockname()[1])
        config = uvicorn.Config(app, lifespan="off", ws="none", interface="asgi3", log_config=None, access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    def __enter__(self) -> AppServer:
        self._thread.start()
        assert wait_for(lambda: self._server.started, 30)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.should_exit = True
        self._thread.join(30)
        self._socket.close()

    @property
    def traces_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"


@pytest.fixture
def gateway(srv: DevServer, tmp_path: Path) -> Iterator[Gateway]:
    environ = {**srv.env(), "PREFACTOR_GATEWAY_TOKENS": INGRESS_TOKEN, "PREFACTOR_FINISH_GRACE_SECONDS": "0"}
    gateway = Gateway(GatewaySettings.load(environ, directory=tmp_path / "gw"))
    gateway.start()
    assert gateway.wait_ready(30)
    yield gateway
    gateway.shutdown(5)


def held_open(port: int, body_bytes: int) -> socket.socket:
    """A request whose headers promise `body_bytes` and whose body has only begun: it holds its slot."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (
        f"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\n"
        f"Authorization: Bearer {INGRESS_TOKEN}\r\nContent-Length: {body_bytes}\r\n\r\n"
    )
    sock.sendall(head.encode() + b"\x0a")
    return sock


def test_requests_beyond_max_pending_are_pushed_back_and_the_slots_come_back(srv: DevServer, gateway: Gateway) -> None:
    app = OtlpHttpApp(gateway, max_request_bytes=1 << 20, max_pending=2, body_timeout_s=60)
    with AppServer(app) as server:
        slow = [held_open(server.port, 1000) for _ in range(2)]
        try:
            # Both slots are taken once the app has begun reading both bodies; then a third request is pushed back.
            def busy() -> httpx.Response | None:
                answer = httpx.post(
                    server.traces_url, content=request_bytes(sdk_trace()), headers={**PROTOBUF, **bearer()}
                )
                return answer if answer.status_code == 429 else None

            pushed_back = wait_for(busy, 30)
            assert pushed_back is not None and pushed_back.headers["retry-after"] == "1"
        finally:
            for sock in slow:
                sock.close()  # the app sees the disconnect: the slots are free again

        spans = sdk_trace()

        def taken() -> bool:
            answer = httpx.post(server.traces_url, content=request_bytes(spans), headers={**PROTOBUF, **bearer()})
            return answer.status_code == 200

        assert wait_for(taken, 30)
        assert wait_for(lambda: arrived(srv, trace_hex(spans), 4), 30)
    app.close()


def test_a_body_that_does_not_arrive_in_time_is_answered_408_and_frees_its_slot(
    srv: DevServer, gateway: Gateway
) -> None:
    app = OtlpHttpApp(gateway, max_request_bytes=1 << 20, max_pending=1, body_timeout_s=0.5)
    with AppServer(app) as server:
        sock = held_open(server.port, 1000)
        try:
            sock.settimeout(30)
            answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408 ")
        finally:
            sock.close()
        spans = sdk_trace()
        good = httpx.post(server.traces_url, content=request_bytes(spans), headers={**PROTOBUF, **bearer()})
        assert good.status_code == 200
        assert wait_for(lambda: arrived(srv, trace_hex(spans), 4), 30)
    app.close()


def test_readyz_answers_503_once_the_gateway_stops_accepting(gateway: Gateway) -> None:
    app = OtlpHttpApp(gateway, max_request_bytes=1 << 20)
    with AppServer(app) as server:
        base = server.traces_url.removesuffix("/v1/traces")
        assert httpx.get(base + "/readyz").status_code == 200
        gateway.stop_accepting()
        not_ready = httpx.get(base + "/readyz")
        assert not_ready.status_code == 503 and "stopping" in not_ready.text
        refused = httpx.post(server.traces_url, content=request_bytes(sdk_trace()), headers={**PROTOBUF, **bearer()})
        assert refused.status_code == 503 and refused.headers["retry-after"].isdigit()
        assert httpx.get(base + "/healthz").status_code == 200
    app.close()


def inflate(encoding: str, data: bytes, limit: int, chunk: int = 7) -> bytes:
    inflater = Inflater(encoding, limit)
    for start in range(0, len(data), chunk):
        inflater.feed(data[start : start + chunk])
    return inflater.finish()


def test_the_inflater_reads_gzip_members_and_deflate_in_any_chunks() -> None:
    one, two = b"first member " * 50, b"second member " * 50
    assert inflate("gzip", gzip.compress(one) + gzip.compress(two), 10_000) == one + two
    assert inflate("deflate", zlib.compress(one), 10_000, chunk=1) == one


@pytest.mark.parametrize(
    ("encoding", "data", "status"),
    [
        ("gzip", lambda: gzip.compress(b"\0" * (50 * 1024 * 1024)), 413),  # a bomb: cut off at the limit
        ("gzip", lambda: gzip.compress(b"x" * 1000)[:-5], 400),  # truncated
        ("gzip", lambda: b"not gzip at all", 400),
        ("deflate", lambda: zlib.compress(b"x" * 100) + b"trailing", 400),
        ("deflate", lambda: b"", 400),
    ],
    ids=["bomb", "truncated", "not-gzip", "after-deflate", "empty"],
)
def test_the_inflater_refuses_what_it_must(encoding: str, data: Callable[[], bytes], status: int) -> None:
    with pytest.raises(Refusal) as refused:
        inflate(encoding, data(), 64 * 1024, chunk=4096)
    assert refused.value.status == status
