"""A deadline-aware network layer: one wall-clock deadline per request, for the HTTP client the exporter builds.

httpx timeouts bound each socket operation, not a request: a server that trickles its answer a byte at a time
keeps a request going for as long as it likes. `DeadlineBackend` wraps httpcore's network backend; the streams
it opens clamp every socket operation (connect, TLS handshake, each write and read) to the time left before the
calling thread's deadline and before a process-wide ceiling, and they wait in slices of at most `SLICE_S`, so a
ceiling lowered while a request is blocked (the process is exiting) ends it within about that slice.

Not bounded here: DNS resolution (the stdlib resolver takes no timeout), and, once started, one connect or one
TLS handshake (each gets the time left when it starts, but a lowered ceiling is noticed only when it returns).

Threads: any sender thread calls `bounded()` around its request; the deadline is thread-local, so threads that
share a client keep their own deadlines. Any thread may set `ceiling` (one float assignment, read on every
check): no lock is needed.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

SLICE_S = 0.25
_WRITE_PIECE = 1 << 16


class DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner
        self._local = threading.local()
        # A monotonic instant no request may pass, whatever its own deadline (set when the process exits).
        self.ceiling: float | None = None

    @contextmanager
    def bounded(self, deadline: float) -> Iterator[None]:
        """Every socket operation of this thread inside the block ends by `deadline` (time.monotonic())."""
        previous = getattr(self._local, "deadline", None)
        self._local.deadline = deadline
        try:
            yield
        finally:
            self._local.deadline = previous

    def time_left(self, expired: type[Exception]) -> float | None:
        """Seconds to this thread's deadline or the ceiling, whichever is first; None when neither is set.
        Raises `expired` once that instant has passed."""
        deadline: float | None = getattr(self._local, "deadline", None)
        ceiling = self.ceiling
        if ceiling is not None:
            deadline = ceiling if deadline is None else min(deadline, ceiling)
        if deadline is None:
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            raise expired("request deadline reached")
        return left

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        timeout = _shortest(timeout, self.time_left(httpcore.ConnectTimeout))
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return DeadlineStream(stream, self, tls_layers=0)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        timeout = _shortest(timeout, self.time_left(httpcore.ConnectTimeout))
        return DeadlineStream(self._inner.connect_unix_socket(path, timeout, socket_options), self, tls_layers=0)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class DeadlineStream(httpcore.NetworkStream):
    """One connection; used by one request at a time (the pool hands it out), so no lock."""

    def __init__(self, inner: httpcore.NetworkStream, backend: DeadlineBackend, *, tls_layers: int) -> None:
        self._inner = inner
        self._backend = backend
        self._tls_layers = tls_layers
        # Writes go straight to the socket (in slices) only when its bytes are ours: with TLS inside TLS (an
        # HTTPS proxy) the socket carries the outer layer, and the inner stream must do the writing.
        sock = inner.get_extra_info("socket") if tls_layers <= 1 else None
        self._socket: socket.socket | None = sock if isinstance(sock, socket.socket) else None

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        op_end = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = self._slice(op_end, httpcore.ReadTimeout)
            try:
                return self._inner.read(max_bytes, wait)
            except httpcore.ReadTimeout:
                # Nothing was consumed: a slice ended. The next turn checks the deadlines again.
                if op_end is not None and time.monotonic() >= op_end:
                    raise

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        op_end = None if timeout is None else time.monotonic() + timeout
        sock = self._socket
        if sock is None:
            # No slicing possible (a timed-out write may have sent part of the buffer): the time left, at once.
            left = self._backend.time_left(httpcore.WriteTimeout)
            self._inner.write(buffer, _shortest(timeout, left))
            return
        view = memoryview(buffer)
        while view:
            wait = self._slice(op_end, httpcore.WriteTimeout)
            try:
                sock.settimeout(wait)
                sent = sock.send(view[:_WRITE_PIECE])
            except TimeoutError:
                # socket.send raises before sending anything when the slice passes: safe to try again.
                if op_end is not None and time.monotonic() >= op_end:
                    raise httpcore.WriteTimeout("write timed out") from None
                continue
            except OSError as exc:
                raise httpcore.WriteError(exc) from exc
            view = view[sent:]

    def _slice(self, op_end: float | None, expired: type[Exception]) -> float:
        left = self._backend.time_left(expired)
        if op_end is not None:
            op_left = op_end - time.monotonic()
            if op_left <= 0:
                raise expired("operation timed out")
            left = op_left if left is None else min(left, op_left)
        return SLICE_S if left is None else min(left, SLICE_S)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        timeout = _shortest(timeout, self._backend.time_left(httpcore.ConnectTimeout))
        stream = self._inner.start_tls(ssl_context, server_hostname, timeout)
        return DeadlineStream(stream, self._backend, tls_layers=self._tls_layers + 1)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def _shortest(timeout: float | None, left: float | None) -> float | None:
    if timeout is None:
        return left
    return timeout if left is None else min(timeout, left)


def install_deadline_backend(transport: httpx.HTTPTransport) -> DeadlineBackend | None:
    """Put a DeadlineBackend under `transport`'s connection pool; None when this httpx/httpcore does not allow it.

    The one place that reaches into private attributes: httpx.HTTPTransport offers no public way to pass a
    network backend (httpcore's pools take one, but building the pool ourselves would mean re-implementing
    httpx's transport). Without it (a future httpx), the caller still checks its deadline between body chunks.
    """
    pool = getattr(transport, "_pool", None)
    inner = getattr(pool, "_network_backend", None)
    if pool is None or inner is None or not callable(getattr(inner, "connect_tcp", None)):
        return None
    backend = DeadlineBackend(inner)
    try:
        pool._network_backend = backend
    except AttributeError:  # slots or a read-only property in another version
        return None
    return backend
