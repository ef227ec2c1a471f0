"""Reading a request's body for the dev server: Content-Length or chunked, bounded, then gzip/deflate decoded.

`BodyReader` reads one request's body from the connection's input stream, as its headers frame and encode it; the
request handler (handler.py) builds one per request. Each request thread reads its own request, so nothing here is
shared or locked. A body over the limit raises `BodyTooLarge` (answered 413), a malformed one `BadRequest`.
"""

from __future__ import annotations

import zlib
from email.message import Message
from io import BufferedIOBase

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


class BodyReader:
    """One request's body: read from `rfile` as `headers` frame it, and decoded as they say it is encoded."""

    def __init__(self, rfile: BufferedIOBase, headers: Message) -> None:
        self.rfile = rfile
        self.headers = headers

    def read(self, limit: int) -> bytes:
        """The raw body, at most `limit` bytes (else `BodyTooLarge`, after draining what is sensible)."""
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

    def decode(self, raw: bytes, limit: int) -> bytes:
        """`raw` decompressed as Content-Encoding says, at most `limit` bytes (else `BodyTooLarge`)."""
        encoding = (self.headers.get("Content-Encoding") or "identity").lower()
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
