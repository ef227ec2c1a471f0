"""Hostile answers for the dev server's faults: trickled, endless, oversized, never sent, or a dropped connection.

`HostileAnswers` is a mixin of the server's request handler (see `Fault`). Each runs on the request's own thread
and writes by hand, so a fault can shape every byte; each ends once the server is stopping (`server.stopping`, an
Event) and counts what it wrote through `DevServer._count_fault_bytes` (which takes its own lock).
"""

from __future__ import annotations

import contextlib
import http
import socket
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING

from prefactor_otel.devserver.request_body import CONNECTION_ERRORS

if TYPE_CHECKING:
    from prefactor_otel.devserver.handler import DevHTTPServer


class HostileAnswers(BaseHTTPRequestHandler):
    """The request handler's hand-written answers (a mixin: the handler in handler.py is one)."""

    server: DevHTTPServer
    _trickle_rate: float | None = None  # bytes/s of the current request's answer, from a trickle fault
    _trickle_head = True  # whether the status line and headers are trickled too

    def _send_hostile(self, status: int, body: bytes | None, *, headers: tuple[tuple[str, str], ...] = ()) -> None:
        """Write an answer by hand, at the fault's trickle rate if any; `body=None` is an endless chunked body."""
        framing = ("Transfer-Encoding", "chunked") if body is None else ("Content-Length", str(len(body)))
        try:
            if not self._write_counted(self._hostile_head(status, (*headers, framing)), trickle=self._trickle_head):
                return
            if body is None:
                chunk = b"%x\r\n%s\r\n" % (1 << 16, b" " * (1 << 16))
                while self._write_counted(chunk):
                    pass
                return
            for start in range(0, len(body), 1 << 16):
                if not self._write_counted(body[start : start + (1 << 16)]):
                    return
        except CONNECTION_ERRORS:
            self.close_connection = True

    def _send_filler(self, status: int, size: int) -> None:
        """Content-Length `size`, filler written in pieces (a 1 GB answer must not cost the server 1 GB)."""
        headers = (("Content-Type", "application/json"), ("Content-Length", str(size)))
        piece = b" " * (1 << 16)
        try:
            if not self._write_counted(self._hostile_head(status, headers), trickle=self._trickle_head):
                return
            left = size
            while left > 0 and self._write_counted(piece[: min(left, len(piece))]):
                left -= min(left, len(piece))
        except CONNECTION_ERRORS:
            self.close_connection = True

    def _hostile_head(self, status: int, headers: tuple[tuple[str, str], ...]) -> bytes:
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        lines = [f"HTTP/1.1 {status} {phrase}", f"Server: {self.server_version}", f"Date: {self.date_time_string()}"]
        lines += [f"{name}: {value}" for name, value in headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _write_counted(self, data: bytes, *, trickle: bool = True) -> bool:
        """Write (trickled at the fault's rate if any) and count; False once the server is stopping."""
        stopping = self.server.stopping
        rate = self._trickle_rate
        if rate is None or not trickle:
            if stopping.is_set():
                return False
            self.wfile.write(data)
            self.server.dev._count_fault_bytes(len(data))
            return True
        # Pieces of ~50 ms worth of bytes (at least one), each after its share of the time.
        piece = max(1, int(rate * 0.05))
        for start in range(0, len(data), piece):
            part = data[start : start + piece]
            if stopping.wait(len(part) / rate):
                return False
            self.wfile.write(part)
            self.server.dev._count_fault_bytes(len(part))
        return True

    def _hold(self) -> None:
        """A black hole: read nothing more, answer nothing, until the client hangs up or the server stops."""
        self.close_connection = True
        while not self.server.stopping.wait(0.1):
            try:
                self.connection.setblocking(False)
                try:
                    peeked = self.connection.recv(1, socket.MSG_PEEK)
                finally:
                    self.connection.setblocking(True)
            except BlockingIOError:
                continue
            except CONNECTION_ERRORS:
                return
            if not peeked:
                return  # the client closed (with an unread body pending we cannot tell: the stop ends it)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
