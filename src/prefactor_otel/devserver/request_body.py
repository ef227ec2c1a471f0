"""Reading a request's body for the dev server: Content-Length or chunked, bounded, then decoded.

`BodyReader` reads one request's body from the connection's input stream, as its headers frame and encode it; the
request handler (handler.py) builds one per request. Each request thread reads its own request, so nothing here is
shared or locked. A body over the limit raises `BodyTooLarge` (answered 413), a malformed one `BadRequest`.

`decode` inflates gzip, deflate and zstd (`Content-Encoding`), never past the same limit as a raw body, so a small
compressed body that would inflate beyond it (a "zip bomb") is answered 413 before it is held in memory. An encoding
this server does not take raises `UnsupportedEncoding` (answered 415, the status HTTP gives it): one not known at
all, one the server was told to refuse (`DevServer(refuse_encodings=...)`, to test a client's fallback), and zstd
when no zstd codec is installed (`zstandard`, or `compression.zstd` on Python 3.14+): the server imports without it.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable, Collection
from email.message import Message
from io import BufferedIOBase
from typing import Any

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


class UnsupportedEncoding(Exception):
    """A Content-Encoding this server does not take (answered 415, with this message)."""


def _zstd_decompressor() -> Callable[[bytes, int], bytes] | None:
    """`f(data, limit)`: the frames in `data` inflated to at most `limit` + 1 bytes; None without a zstd codec."""
    try:
        stdlib: Any = importlib.import_module("compression.zstd")  # Python 3.14+
    except ImportError:
        pass
    else:

        def inflate_stdlib(data: bytes, limit: int) -> bytes:
            out = b""
            try:
                for _ in range(1 << 16):  # frames: bounded
                    if not data:
                        break
                    decompressor = stdlib.ZstdDecompressor()
                    out += decompressor.decompress(data, max_length=limit + 1 - len(out))
                    if len(out) > limit:
                        break
                    if not decompressor.eof:
                        raise ValueError("truncated zstd frame")
                    data = decompressor.unused_data
            except stdlib.ZstdError as exc:
                raise ValueError(str(exc)) from None
            return out

        return inflate_stdlib
    try:
        zstandard: Any = importlib.import_module("zstandard")
    except ImportError:
        return None

    def inflate(data: bytes, limit: int) -> bytes:
        # A streaming read: the frame's declared content size is not trusted, at most limit + 1 bytes come out.
        reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
        parts: list[bytes] = []
        size = 0
        try:
            while size <= limit:
                chunk = reader.read(min(1 << 16, limit + 1 - size))
                if not chunk:
                    break
                parts.append(chunk)
                size += len(chunk)
            declared = zstandard.frame_content_size(data)
        except zstandard.ZstdError as exc:
            raise ValueError(str(exc)) from None
        if size <= limit and (size < declared or (not size and data)):
            raise ValueError("truncated zstd frame")  # the reader ends quietly at the end of a cut frame
        return b"".join(parts)

    return inflate


_ZSTD = _zstd_decompressor()


def decodable_encodings() -> tuple[str, ...]:
    """The Content-Encodings this server can decode (besides identity)."""
    return ("zstd", "gzip", "deflate") if _ZSTD is not None else ("gzip", "deflate")


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

    @property
    def encoding(self) -> str:
        """The body's Content-Encoding, lower-cased ("identity" when none)."""
        return (self.headers.get("Content-Encoding") or "identity").strip().lower()

    def decode(self, raw: bytes, limit: int, refused: Collection[str] = ()) -> bytes:
        """`raw` decompressed as Content-Encoding says, at most `limit` bytes (else `BodyTooLarge`). An encoding in
        `refused`, or one this server cannot decode, raises `UnsupportedEncoding`."""
        encoding = self.encoding
        if encoding == "identity":
            return raw
        if encoding in refused:
            raise UnsupportedEncoding(f"this server is set to refuse Content-Encoding {encoding}; send identity")
        if encoding == "zstd":
            if _ZSTD is None:
                raise UnsupportedEncoding("Content-Encoding zstd needs the zstandard package on this server")
            try:
                out = _ZSTD(raw, limit)
            except ValueError:
                raise BadRequest("body is not valid zstd") from None
        elif encoding in ("gzip", "deflate"):
            try:
                wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
                decompressor = zlib.decompressobj(wbits)
                # Bounded: a small compressed body must not inflate past the limit (zip bomb).
                out = decompressor.decompress(raw, limit + 1)
            except zlib.error:
                raise BadRequest(f"body is not valid {encoding}") from None
        else:
            taken = ", ".join(decodable_encodings())
            raise UnsupportedEncoding(f"unsupported Content-Encoding {encoding}; this server takes {taken}")
        if len(out) > limit:
            raise BodyTooLarge(None, drained=True)
        return out
