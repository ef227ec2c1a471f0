"""Reading a request's body for the dev server: Content-Length or chunked, bounded, then gzip/deflate decoded.

`BodyReader` is a mixin of the server's request handler; each request thread reads its own request, so nothing
here is shared or locked. A body over the limit raises `BodyTooLarge` (answered 413), a malformed one `BadRequest`.
"""

from __future__ import annotations

import zlib
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefactor_otel.devserver.handler import DevHTTPServer

# Above this, a too-large body is not even drained: the connection is just closed after the 413.
_DRAIN_LIMIT = 256 * 1024 * 1024
CONNECTION_ERRORS = (ConnectionError, TimeoutError, OSError)


class BodyTooLarge(Exception):
    def __init__(self, size: int | None, drained: bool) -> None:
        super().__init__("body too large")
        self.size = size
        self.drained = drained


class BadRequest(Exception):
    pass


class BodyReader(BaseHTTPRequestHandler):
    """The request handler's body reading (a mixin: the handler in handler.py is one)."""

    server: DevHTTPServer

    def _read_body(self, limit: int) -> bytes:
        encoding = (self.headers.get("Transfer-Encoding") or "").lower()
        if encoding == "chunked":
            return self._read_chunked(limit)
        if encoding:
            raise BadRequest(f"unsupported Transfer-Encoding {encoding}")
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            return b""
        try:
            length = int(length_header)
        except ValueError:
            raise BadRequest("invalid Content-Length") from None
        if length < 0:
            raise BadRequest("invalid Content-Length")
        if length > limit:
            # Drain what the client is sending anyway, so it reads our 413 instead of a broken pipe.
            if length > _DRAIN_LIMIT:
                raise BodyTooLarge(length, drained=False)
            remaining = length
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 1 << 16))
                if not chunk:
                    raise ConnectionResetError("client closed while sending")
                remaining -= len(chunk)
            raise BodyTooLarge(length, drained=True)
        body = self.rfile.read(length)
        if len(body) != length:
            raise ConnectionResetError("client closed while sending")
        return body

    def _read_chunked(self, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            if not line:
                raise ConnectionResetError("client closed while sending")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BadRequest("invalid chunked encoding") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > limit:
                raise BodyTooLarge(None, drained=False)
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _decode(self, raw: bytes) -> bytes:
        encoding = (self.headers.get("Content-Encoding") or "identity").lower()
        limit = self.server.dev.max_body_bytes
        if encoding == "identity":
            return raw
        if encoding not in ("gzip", "deflate"):
            raise BadRequest(f"unsupported Content-Encoding {encoding}")
        try:
            wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
            decompressor = zlib.decompressobj(wbits)
            # Bounded: a small compressed body must not inflate past the limit (zip bomb).
            out = decompressor.decompress(raw, limit + 1)
        except zlib.error:
            raise BadRequest(f"body is not valid {encoding}") from None
        if len(out) > limit:
            raise BodyTooLarge(None, drained=True)
        return out
