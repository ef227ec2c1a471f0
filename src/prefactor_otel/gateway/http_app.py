"""OTLP/HTTP in front of the gateway: a plain ASGI application (no web framework), served by uvicorn (server.py).

Routes and answers, as OTLP/HTTP specifies them:
- `POST /v1/traces`, body `application/x-protobuf` or `application/json` (parameters such as `charset` ignored),
  plain or `Content-Encoding: gzip` (also `deflate` and `identity`, which the OTel exporters may send):
  200 with an ExportTraceServiceResponse in the request's content type (`partial_success` when spans were
  rejected); 400 undecodable body; 401 (with `WWW-Authenticate: Bearer`) no or unknown ingress token; 413 over
  `max_request_bytes` (decompressed; a `Content-Length` over it is refused before anything is read, and bytes are
  counted while reading, so a body without a length or a gzip bomb is cut off at the limit and never held whole);
  415 another content type or encoding; 429 / 503 with `Retry-After` (integer seconds) when the gateway cannot take
  the request now (`Overloaded`), and 429 as well when more than `max_pending` requests are already being handled
  (each holds its body: this bounds the memory the bodies take); 408 when a body takes more than `body_timeout_s`
  to arrive (a client trickling bytes must not hold a slot for ever). Error bodies are a `google.rpc.Status` in
  the request's content type (JSON for a content type that is neither).
- `GET /healthz`: 200 while the process serves. `GET /readyz`: 200, or 503 with `Gateway.not_ready_reason()`.
  Both open: they name nothing.
- `GET /stats`: 200, JSON (`Gateway.stats_view`): the gateway's counters and, per (route, agent) pipeline, spans
  accepted, delivered, spooled and dropped by reason, runs open, spans queued. It names routes and agents, so it
  needs an ingress token whenever the gateway has any (401 as for `/v1/traces`) and shows that token's route only;
  a gateway without tokens (loopback only) shows every route.
- Anything else: 404 unknown path, 405 (with `Allow`) wrong method.

The ingress token is checked first (`Gateway.authenticate`: constant time, refusals counted), so a client
without a valid one gets its 401 before a byte of its body is read or decoded; `Gateway.accept` checks it again.
A refused request changes nothing: it never reaches `Gateway.accept` (or `accept` refuses it whole), and the
application keeps serving whatever a request held. Each refusal is logged on the `prefactor_otel` logger, one line
per kind, rate-limited (`_logging.RateLimitedLog`); neither a token nor a header value is ever part of a line.

Threads: `__call__` runs on uvicorn's event loop thread only; `_pending` (the requests being handled) is read and
written there alone, so it needs no lock. Decoding and `Gateway.accept` (which blocks until the spans are durable:
an fsync, or delivery) run in the application's own bounded thread pool (`workers` threads), never on the event
loop; `Gateway.not_ready_reason` does too, since it may wait for the gateway's lock. `Gateway.authenticate` runs on
the loop: it compares tokens and, on a refusal, takes only the gateway's counters lock, held for an update and never
across anything that waits. `close()` shuts that pool down once the server has stopped.
"""

from __future__ import annotations

import asyncio
import logging
import math
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from json import dumps as json_dumps
from typing import Any

from prefactor_otel._logging import RateLimitedLog, logger
from prefactor_otel.gateway.otlp import (
    OtlpDecodeError,
    export_response,
    parse_json,
    parse_protobuf,
    response_body,
    status_body,
)
from prefactor_otel.gateway.service import Acceptance, Gateway, Overloaded, Unauthenticated

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

TRACES_PATH = "/v1/traces"
STATS_PATH = "/stats"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
DEFAULT_WORKERS = 8
DEFAULT_MAX_PENDING = 32
DEFAULT_BODY_TIMEOUT_S = 30.0  # a body that takes longer to arrive holds a pending slot for nothing: 408
BUSY_RETRY_AFTER_S = 1
# A compressed body may be a little larger than what it decompresses to (incompressible data): the raw bytes read
# of a compressed body are capped at the limit plus this much, the decompressed bytes at the limit exactly.
_COMPRESSED_SLACK = 64 * 1024
_INFLATE_STEPS = 1_000_000  # bounds the inflate loop; each step consumes input or yields output

# google.rpc.Code values carried in the error bodies
_INVALID_ARGUMENT = 3
_RESOURCE_EXHAUSTED = 8
_UNIMPLEMENTED = 12
_INTERNAL = 13
_UNAVAILABLE = 14
_UNAUTHENTICATED = 16


class Refusal(Exception):
    """A request answered with an error: HTTP status, google.rpc code, a short safe message, extra headers, and
    the kind the log line is keyed by."""

    def __init__(
        self, status: int, rpc_code: int, message: str, kind: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.rpc_code = rpc_code
        self.message = message
        self.kind = kind
        self.headers = headers or []


def retry_after_seconds(retry_after_s: float) -> int:
    """`Retry-After` in whole seconds, at least 1 (a 0 would invite an immediate retry storm)."""
    if not math.isfinite(retry_after_s):
        return BUSY_RETRY_AFTER_S
    return max(1, math.ceil(retry_after_s))


def overloaded_refusal(exc: Overloaded) -> Refusal:
    seconds = retry_after_seconds(exc.retry_after_s)
    headers = [(b"retry-after", str(seconds).encode())]
    if exc.unavailable:
        return Refusal(503, _UNAVAILABLE, f"unavailable: {exc.reason}", "unavailable", headers)
    return Refusal(429, _RESOURCE_EXHAUSTED, f"overloaded: {exc.reason}", "overloaded", headers)


class Inflater:
    """Decompresses a body as it arrives, never beyond `limit` bytes of output (a gzip bomb is cut off at the limit:
    memory stays bounded by it). gzip may hold several members one after another (RFC 1952); deflate is zlib's
    format, as HTTP's `deflate` is."""

    def __init__(self, encoding: str, limit: int) -> None:
        self._wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
        self._multi_member = encoding == "gzip"
        self._inflate = zlib.decompressobj(self._wbits)
        self._limit = limit
        self._out = bytearray()

    def feed(self, data: bytes) -> None:
        """Raises Refusal: 413 over the limit, 400 not valid compressed data."""
        for _ in range(_INFLATE_STEPS):
            if not data:
                return
            if self._inflate.eof:
                if not self._multi_member:
                    raise Refusal(400, _INVALID_ARGUMENT, "data after the end of the deflate stream", "undecodable")
                self._inflate = zlib.decompressobj(self._wbits)  # the next gzip member
            try:
                self._out += self._inflate.decompress(data, self._limit - len(self._out) + 1)
            except zlib.error:
                raise Refusal(400, _INVALID_ARGUMENT, "the body is not valid compressed data", "undecodable") from None
            if len(self._out) > self._limit:
                raise too_large(self._limit)
            data = self._inflate.unused_data if self._inflate.eof else self._inflate.unconsumed_tail
        raise Refusal(400, _INVALID_ARGUMENT, "the compressed body does not decompress", "undecodable")

    def finish(self) -> bytes:
        if not self._inflate.eof:
            raise Refusal(400, _INVALID_ARGUMENT, "the compressed body is truncated", "undecodable")
        return bytes(self._out)


def _unauthenticated() -> Refusal:
    challenge = [(b"www-authenticate", b"Bearer")]
    return Refusal(401, _UNAUTHENTICATED, "no or unknown ingress token", "unauthenticated", challenge)


def too_large(limit: int) -> Refusal:
    return Refusal(413, _RESOURCE_EXHAUSTED, f"the request is over {limit} bytes", "too_large")


def _header(scope: Scope, name: bytes) -> str | None:
    """A request header's value (the first one), decoded as latin-1 as HTTP/1.1 allows."""
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def media_type(content_type: str | None) -> str:
    """`application/json; charset=utf-8` -> `application/json`."""
    return (content_type or "").split(";", 1)[0].strip().lower()


class OtlpHttpApp:
    """The ASGI application: `await app(scope, receive, send)` for each HTTP request (module docstring)."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        max_request_bytes: int,
        workers: int = DEFAULT_WORKERS,
        max_pending: int = DEFAULT_MAX_PENDING,
        body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
        log: RateLimitedLog | None = None,
    ) -> None:
        self._gateway = gateway
        self._limit = max_request_bytes
        self._body_timeout_s = body_timeout_s
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prefactor-gateway-http")
        self._max_pending = max_pending
        self._pending = 0  # event loop thread only
        self._log = log or RateLimitedLog(interval=10.0)

    def close(self) -> None:
        """Once the server has stopped: wait for the pool's threads (their requests are over by then)."""
        self._pool.shutdown(wait=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # uvicorn runs with websockets off: nothing else arrives
        path, method = scope["path"], scope["method"]
        if path == TRACES_PATH:
            await self._traces(scope, receive, send, method)
        elif path in ("/healthz", "/readyz"):
            await self._health(scope, send, method, ready=path == "/readyz")
        elif path == STATS_PATH:
            await self._stats(scope, send, method)
        else:
            await self._text(scope, send, 404, "not found\n", "not_found")

    async def _health(self, scope: Scope, send: Send, method: str, *, ready: bool) -> None:
        if method not in ("GET", "HEAD"):
            await self._text(scope, send, 405, "method not allowed\n", "method", [(b"allow", b"GET, HEAD")])
            return
        if not ready:
            await _answer(send, 200, b"ok\n", b"text/plain; charset=utf-8", head=method == "HEAD")
            return
        loop = asyncio.get_running_loop()
        reason = await loop.run_in_executor(self._pool, self._gateway.not_ready_reason)
        if reason is None:
            await _answer(send, 200, b"ready\n", b"text/plain; charset=utf-8", head=method == "HEAD")
        else:
            body = f"not ready: {reason}\n".encode()
            await _answer(send, 503, body, b"text/plain; charset=utf-8", head=method == "HEAD")

    async def _stats(self, scope: Scope, send: Send, method: str) -> None:
        if method not in ("GET", "HEAD"):
            await self._text(scope, send, 405, "method not allowed\n", "method", [(b"allow", b"GET, HEAD")])
            return
        authorization = _header(scope, b"authorization")
        try:
            self._gateway.authenticate(authorization)  # on the loop, before anything is gathered
        except Unauthenticated:
            refusal = _unauthenticated()
            await self._text(scope, send, 401, "no or unknown ingress token\n", refusal.kind, refusal.headers)
            return
        loop = asyncio.get_running_loop()
        try:
            view = await loop.run_in_executor(self._pool, self._gateway.stats_view, authorization)
        except Unauthenticated:
            refusal = _unauthenticated()
            await self._text(scope, send, 401, "no or unknown ingress token\n", refusal.kind, refusal.headers)
            return
        body = (json_dumps(view, sort_keys=True, default=str) + "\n").encode()
        await _answer(send, 200, body, JSON.encode(), head=method == "HEAD")

    async def _traces(self, scope: Scope, receive: Receive, send: Send, method: str) -> None:
        kind = media_type(_header(scope, b"content-type"))
        json = kind != PROTOBUF  # error bodies for a foreign content type are JSON, readable by whoever sent it
        try:
            if method != "POST":
                raise Refusal(405, _UNIMPLEMENTED, "only POST is allowed", "method", [(b"allow", b"POST")])
            authorization = _header(scope, b"authorization")
            try:
                self._gateway.authenticate(authorization)  # before a byte of the body is read or decoded
            except Unauthenticated:
                raise _unauthenticated() from None
            if kind not in (PROTOBUF, JSON):
                raise Refusal(415, _INVALID_ARGUMENT, f"content type must be {PROTOBUF} or {JSON}", "content_type")
            if self._pending >= self._max_pending:
                retry = [(b"retry-after", str(BUSY_RETRY_AFTER_S).encode())]
                raise Refusal(429, _RESOURCE_EXHAUSTED, "too many requests at once", "busy", retry)
            self._pending += 1
            try:
                try:
                    body = await asyncio.wait_for(self._read_body(scope, receive), self._body_timeout_s)
                except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                    raise Refusal(408, _INVALID_ARGUMENT, "the body did not arrive in time", "slow_body") from None
                acceptance = await asyncio.get_running_loop().run_in_executor(
                    self._pool, self._decode_and_accept, authorization, body, json
                )
            finally:
                self._pending -= 1
        except Refusal as refusal:
            await self._refuse(scope, send, refusal, json=json)
            return
        except Exception:  # a bug of ours: answered and logged, and the next request is served as usual
            logger.exception("Prefactor gateway: internal error handling POST %s", TRACES_PATH)
            await self._refuse(scope, send, Refusal(500, _INTERNAL, "internal error", "internal"), json=json)
            return
        answer = export_response(acceptance.rejected_spans, acceptance.message)
        await _answer(send, 200, response_body(answer, json=json), (JSON if json else PROTOBUF).encode())

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        """The request's body, decompressed, within the limit (Refusal otherwise)."""
        encoding = (_header(scope, b"content-encoding") or "identity").strip().lower()
        if encoding not in ("identity", "gzip", "deflate"):
            raise Refusal(415, _INVALID_ARGUMENT, "content encoding must be gzip or none", "content_encoding")
        raw_limit = self._limit if encoding == "identity" else self._limit + _COMPRESSED_SLACK
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise Refusal(400, _INVALID_ARGUMENT, "invalid Content-Length", "undecodable")
            if int(declared) > raw_limit:
                raise too_large(self._limit)  # refused before a byte of the body is read
        inflater = None if encoding == "identity" else Inflater(encoding, self._limit)
        raw = bytearray()
        read = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Refusal(400, _INVALID_ARGUMENT, "the client went away", "disconnected")
            chunk = bytes(message.get("body", b""))
            read += len(chunk)
            if read > raw_limit:
                raise too_large(self._limit)
            if inflater is None:
                raw += chunk
            else:
                inflater.feed(chunk)
            if not message.get("more_body", False):
                break
        return bytes(raw) if inflater is None else inflater.finish()

    def _decode_and_accept(self, authorization: str | None, body: bytes, json: bool) -> Acceptance:
        """On a pool thread: decode, then hand to the gateway (blocks until durable). Raises Refusal."""
        try:
            request = parse_json(body) if json else parse_protobuf(body)
        except OtlpDecodeError as exc:
            raise Refusal(400, _INVALID_ARGUMENT, str(exc), "undecodable") from None
        try:
            return self._gateway.accept(authorization, request)
        except Unauthenticated:
            raise _unauthenticated() from None
        except Overloaded as exc:
            raise overloaded_refusal(exc) from None

    async def _refuse(self, scope: Scope, send: Send, refusal: Refusal, *, json: bool) -> None:
        self._note(scope, refusal.status, refusal.kind, refusal.message)
        body = status_body(refusal.rpc_code, refusal.message, json=json)
        await _answer(send, refusal.status, body, (JSON if json else PROTOBUF).encode(), refusal.headers)

    async def _text(
        self,
        scope: Scope,
        send: Send,
        status: int,
        text: str,
        kind: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self._note(scope, status, kind, text.strip())
        await _answer(send, status, text.encode(), b"text/plain; charset=utf-8", headers or [])

    def _note(self, scope: Scope, status: int, kind: str, message: str) -> None:
        """One log line per kind of refusal, rate-limited; the method and path are ours to show, never a header."""
        client = scope.get("client") or ("?", 0)
        path = scope["path"] if scope["path"] in (TRACES_PATH, STATS_PATH, "/healthz", "/readyz") else "(other path)"
        self._log.log(
            logging.WARNING,
            f"http {status} {kind}",
            "Prefactor gateway: refused %s %s from %s: %d %s (%s)",
            scope["method"],
            path,
            client[0],
            status,
            kind,
            message,
        )


async def _answer(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    head: bool = False,
) -> None:
    all_headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": b"" if head else body, "more_body": False})


async def _lifespan(receive: Receive, send: Send) -> None:
    """ASGI lifespan: nothing to set up or tear down here (server.py owns the gateway's life)."""
    for _ in range(2):
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
