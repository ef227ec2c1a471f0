"""`prefactor-otel gateway` running: the Gateway, its OTLP/gRPC server and its OTLP/HTTP server in one process.

`run(settings)`, in order:
1. builds and starts the `Gateway`: it takes its directory (another gateway holding it, or an unusable directory:
   the process says why and exits 2, before listening anywhere), announces where spans go (its start-up line, on
   the `prefactor_otel` logger, else stderr: never a token), and its worker replays what an earlier gateway
   acknowledged. Until the replay is done `/readyz` answers 503 with the reason and requests are answered 503 /
   UNAVAILABLE with a Retry-After, so a restart never refuses a client for good;
2. binds the HTTP socket (uvicorn serves it) and the gRPC port and prints, on stdout,
   `prefactor-otel gateway: listening http=HOST:PORT grpc=HOST:PORT` with the ports actually bound (port 0 picks
   free ones; tests and scripts parse this line). An address that cannot be bound: exit 2;
3. serves until SIGTERM or SIGINT, then: the gateway stops accepting (`Gateway.stop_accepting()`: requests still
   arriving are answered 503 / UNAVAILABLE, which clients retry), both servers stop listening and let the requests
   in flight finish (at most the budget), the gateway delivers or spools everything (`Gateway.shutdown(budget)`:
   what it acknowledged and could not finish is in its directory, replayed by the next start), and `run` returns 0.

The budget is the exporter's PREFACTOR_SHUTDOWN_TIMEOUT (the default route's `config.shutdown_timeout`); the
servers' grace and the gateway's shutdown each get it.

Threads: the caller's thread (the main thread, for the signal handlers) runs uvicorn's event loop until the stop,
then the shutdown; `prefactor-gateway-stop` waits for the stop
request and carries it out (a signal handler only sets an Event: it may interrupt the main thread anywhere, so it
takes no lock of the gateway's). grpcio's and the HTTP app's thread pools handle requests. `_Stop` holds the one
Event every thread reads; nothing else is shared but the Gateway, which is thread-safe.
"""

from __future__ import annotations

import math
import signal
import socket
import sys
import threading
from types import FrameType
from typing import TextIO

import uvicorn

from prefactor_otel._logging import logger
from prefactor_otel.gateway.grpc_service import build_server
from prefactor_otel.gateway.http_app import OtlpHttpApp
from prefactor_otel.gateway.service import Gateway
from prefactor_otel.gateway.settings import GatewaySettings

DEFAULT_SHUTDOWN_BUDGET_S = 5.0
LISTENING_PREFIX = "prefactor-otel gateway: listening"


def address(host: str, port: int) -> str:
    """`127.0.0.1:4318`, `[::1]:4318`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listening_line(host: str, http_port: int, grpc_port: int) -> str:
    return f"{LISTENING_PREFIX} http={address(host, http_port)} grpc={address(host, grpc_port)}"


def bind_http(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (0: a free port), for uvicorn to listen on. Raises OSError."""
    family, kind, proto, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
        0
    ]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart may rebind while old sockets linger
        sock.bind(sockaddr)
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


class _Stop:
    """The one stop request: set by a signal, by a failed start, or by the end of serving; read by every thread."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.signal_name: str | None = None

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
        self.requested.set()


class _HttpServer(uvicorn.Server):
    """uvicorn's server, which takes over SIGINT and SIGTERM while it serves: a signal it catches is our stop too.

    After serving, uvicorn raises the signals it caught again under the handlers it found, which are ours (installed
    before it starts), so that second delivery only sets the Event already set."""

    def __init__(self, config: uvicorn.Config, stop: _Stop) -> None:
        super().__init__(config)
        self._stop = stop

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._stop.on_signal(sig, frame)


def _budget(settings: GatewaySettings) -> float:
    budget = settings.config.shutdown_timeout
    return float(budget) if budget > 0 else DEFAULT_SHUTDOWN_BUDGET_S


def run(settings: GatewaySettings, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the gateway in the foreground until SIGTERM or SIGINT (module docstring). Returns the exit status:
    0 after a stop, 2 when it cannot start (the reason is on `err`)."""
    stdout = out or sys.stdout
    stderr = err or sys.stderr
    budget = _budget(settings)
    stop = _Stop()
    on_main_thread = threading.current_thread() is threading.main_thread()
    if on_main_thread:
        previous = {sig: signal.signal(sig, stop.on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _run(settings, budget, stop, stdout, stderr)
    finally:
        if on_main_thread:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _run(settings: GatewaySettings, budget: float, stop: _Stop, stdout: TextIO, stderr: TextIO) -> int:
    gateway = Gateway(settings)
    try:
        gateway.start()  # takes the directory, announces where spans go; its worker replays, then it is ready
    except Exception as exc:  # another gateway holds the directory, the directory is unusable, ...
        print(f"prefactor-otel gateway: cannot start: {exc}", file=stderr, flush=True)
        gateway.shutdown(0)
        return 2
    try:
        http_socket = bind_http(settings.host, settings.http_port)
        grpc_server, grpc_port = build_server(
            gateway, host=settings.host, port=settings.grpc_port, max_request_bytes=settings.max_request_bytes
        )
    except OSError as exc:
        where = f"{address(settings.host, settings.http_port)} (HTTP) or {address(settings.host, settings.grpc_port)}"
        print(f"prefactor-otel gateway: cannot listen on {where} (gRPC): {exc}", file=stderr, flush=True)
        gateway.shutdown(budget)
        return 2
    app = OtlpHttpApp(gateway, max_request_bytes=settings.max_request_bytes)
    http_port = int(http_socket.getsockname()[1])
    print(listening_line(settings.host, http_port, grpc_port), file=stdout, flush=True)

    config = uvicorn.Config(
        app,
        lifespan="off",
        ws="none",
        interface="asgi3",
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=max(1, math.ceil(budget)),
    )
    http_server = _HttpServer(config, stop)
    grpc_stopped: list[threading.Event] = []

    def carry_out_stop() -> None:
        stop.requested.wait()
        gateway.stop_accepting()
        grpc_stopped.append(grpc_server.stop(grace=budget))
        http_server.should_exit = True  # uvicorn looks at it every tenth of a second

    stopper = threading.Thread(target=carry_out_stop, name="prefactor-gateway-stop", daemon=True)
    grpc_server.start()
    stopper.start()
    try:
        if not stop.requested.is_set():
            http_server.run(sockets=[http_socket])
    finally:
        stop.requested.set()  # whatever ended serving, the rest stops too
        stopper.join()
        http_socket.close()
        for stopped in grpc_stopped:
            stopped.wait(budget + 1.0)
        gateway.shutdown(budget)
        app.close()
    why = f" ({stop.signal_name})" if stop.signal_name else ""
    logger.info("Prefactor gateway: stopped%s", why)
    print(f"prefactor-otel gateway: stopped{why}", file=stdout, flush=True)
    return 0
