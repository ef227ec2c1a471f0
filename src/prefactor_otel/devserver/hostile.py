"""Hostile answers for the dev server's faults: trickled, endless, oversized, never sent, or a dropped connection.

`HostileWriter` writes one request's answer by hand (see `Fault`), so a fault can shape every byte: the request
handler (handler.py) builds one per request that a fault touches, with the connection, the server's stopping Event
and the counter of fault bytes it writes to. Each runs on the request's own thread; each ends once the server is
stopping (`stopping` is set) and counts what it wrote through `count_bytes` (`Traffic.count_fault_bytes`,
request_log.py, which takes its own lock). Nothing here is shared between requests.
"""

from __future__ import annotations

import contextlib
import http
import socket
import threading
from collections.abc import Callable
from io import BufferedIOBase

from prefactor_otel.devserver.request_body import CONNECTION_ERRORS


class HostileWriter:
    """One request's hand-written answer: trickled at `rate` bytes/s if a fault says so, endless, filler, held
    back or dropped. The send methods answer False when the connection failed (the handler then closes it)."""

    def __init__(
        self,
        wfile: BufferedIOBase,
        connection: socket.socket,
        *,
        stopping: threading.Event,
        count_bytes: Callable[[int], None],
        server_version: str,
        date: Callable[[], str],
        rate: float | None = None,
        trickle_head: bool = True,
    ) -> None:
        self._wfile = wfile
        self._connection = connection
        self._stopping = stopping
        self._count_bytes = count_bytes
        self._server_version = server_version
        self._date = date
        self._rate = rate  # bytes/s of the answer, from a trickle fault; None writes at once
        self._trickle_head = trickle_head  # whether the status line and headers are trickled too

    @property
    def trickles(self) -> bool:
        """Whether a trickle fault sets this answer's pace (then every answer of the request goes through here)."""
        return self._rate is not None

    def send(self, status: int, body: bytes | None, *, headers: tuple[tuple[str, str], ...] = ()) -> bool:
        """Write an answer by hand, at the fault's trickle rate if any; `body=None` is an endless chunked body."""
        framing = ("Transfer-Encoding", "chunked") if body is None else ("Content-Length", str(len(body)))
        try:
            if not self._write_counted(self._head(status, (*headers, framing)), trickle=self._trickle_head):
                return True
            if body is None:
                chunk = b"%x\r\n%s\r\n" % (1 << 16, b" " * (1 << 16))
                while self._write_counted(chunk):
                    pass
                return True
            for start in range(0, len(body), 1 << 16):
                if not self._write_counted(body[start : start + (1 << 16)]):
                    return True
        except CONNECTION_ERRORS:
            return False
        return True

    def send_filler(self, status: int, size: int) -> bool:
        """Content-Length `size`, filler written in pieces (a 1 GB answer must not cost the server 1 GB)."""
        headers = (("Content-Type", "application/json"), ("Content-Length", str(size)))
        piece = b" " * (1 << 16)
        try:
            if not self._write_counted(self._head(status, headers), trickle=self._trickle_head):
                return True
            left = size
            while left > 0 and self._write_counted(piece[: min(left, len(piece))]):
                left -= min(left, len(piece))
        except CONNECTION_ERRORS:
            return False
        return True

    def _head(self, status: int, headers: tuple[tuple[str, str], ...]) -> bytes:
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        lines = [f"HTTP/1.1 {status} {phrase}", f"Server: {self._server_version}", f"Date: {self._date()}"]
        lines += [f"{name}: {value}" for name, value in headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _write_counted(self, data: bytes, *, trickle: bool = True) -> bool:
        """Write (trickled at the fault's rate if any) and count; False once the server is stopping."""
        stopping = self._stopping
        rate = self._rate
        if rate is None or not trickle:
            if stopping.is_set():
                return False
            self._wfile.write(data)
            self._count_bytes(len(data))
            return True
        # Pieces of ~50 ms worth of bytes (at least one), each after its share of the time.
        piece = max(1, int(rate * 0.05))
        for start in range(0, len(data), piece):
            part = data[start : start + piece]
            if stopping.wait(len(part) / rate):
                return False
            self._wfile.write(part)
            self._count_bytes(len(part))
        return True

    def hold(self) -> None:
        """A black hole: read nothing more, answer nothing, until the client hangs up or the server stops. The
        handler closes the connection afterwards."""
        while not self._stopping.wait(0.1):
            try:
                self._connection.setblocking(False)
                try:
                    peeked = self._connection.recv(1, socket.MSG_PEEK)
                finally:
                    self._connection.setblocking(True)
            except BlockingIOError:
                continue
            except CONNECTION_ERRORS:
                return
            if not peeked:
                return  # the client closed (with an unread body pending we cannot tell: the stop ends it)

    def drop(self) -> None:
        """Shut the connection down without an answer; the handler closes it afterwards."""
        with contextlib.suppress(OSError):
            self._connection.shutdown(socket.SHUT_RDWR)
