"""The HTTP side of a `DevServer`: read each request, authenticate it, apply faults, hand it to `route`, answer.

`DevHTTPServer` is the listening socket of one `DevServer` (it holds `site`, the parts and settings its requests
use, which the DevServer assembles in server.py, and the set of open connections); `_Handler` runs each request and
holds, per request, the parts it calls: a `BodyReader` (request_body.py) reads the body, a `HostileWriter`
(hostile.py) writes the hand-made answers of a fault; which requests are refused before anything else (other hosts,
other origins) is `guard.refusal` (guard.py), and what a method and path mean (a store call or a `/_dev` test
endpoint) is `route` (routes.py).
Threads: one serving thread (started by `DevServer.start`) accepts, one thread per request runs `_Handler`;
`DevServer.stop` (the caller's thread) wakes the serving thread and closes open connections. `connections_lock`
guards the connection set; `site` is set once; all else a request touches (store, faults, the request log and fault
byte count in `Traffic`) takes its own lock.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import selectors
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from prefactor_otel.devserver import guard, webpage
from prefactor_otel.devserver.faults import Fault, FaultSet
from prefactor_otel.devserver.hostile import HostileWriter
from prefactor_otel.devserver.request_body import (
    CONNECTION_ERRORS,
    BadRequest,
    BodyReader,
    BodyTooLarge,
    UnsupportedEncoding,
    decodable_encodings,
)
from prefactor_otel.devserver.request_log import RequestLog, Traffic, describe
from prefactor_otel.devserver.routes import API, route
from prefactor_otel.devserver.store import ApiError, JsonDict, Store, error_body

logger = logging.getLogger("prefactor_otel.devserver")

_DEFAULT_FAULT_CODES = {
    400: "bad_request",
    401: "bad_authtoken",
    403: "not_permitted",
    404: "not_found",
    409: "invalid_action",
    413: "bad_request",
    422: "validation_errors",
}


@dataclass(frozen=True)
class Site:
    """What the requests of one server answer for and with: its settings and the parts they call. `DevServer`
    (server.py) assembles it."""

    token: str
    host: str
    allowed_hosts: frozenset[str]
    max_body_bytes: int
    store: Store
    faults: FaultSet
    traffic: Traffic
    refused_encodings: frozenset[str] = frozenset()  # Content-Encodings answered 415 (request_body.py)


class DevHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Keep-alive connections would make server_close() wait forever; stop() closes them itself.
    block_on_close = False

    # handle_request() must not wait: our own loop only calls it once the listening socket is readable.
    timeout = 0

    def __init__(self, address: tuple[str, int], site: Site) -> None:
        self.site = site
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopped = threading.Event()
        # Set first thing in stop(): hostile answers (trickles, endless bodies, black holes) end on it.
        self.stopping = threading.Event()
        super().__init__(address, _Handler)

    def serve_until_stopped(self) -> None:
        # Not serve_forever(): that polls for shutdown, so every stop() would cost up to a poll interval,
        # and test suites stop hundreds of servers. A wake-up socket makes stop() immediate.
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self, selectors.EVENT_READ)
                selector.register(self._wake_r, selectors.EVENT_READ)
                while True:
                    events = selector.select()
                    if any(key.fileobj is self._wake_r for key, _ in events):
                        return
                    self.handle_request()
        finally:
            self._stopped.set()

    def stop_serving(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._stopped.wait(5)

    def server_close(self) -> None:
        super().server_close()
        for sock in (self._wake_r, self._wake_w):
            sock.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-request is normal for a test server: no traceback on stderr.
        exc = sys.exc_info()[1]
        if isinstance(exc, CONNECTION_ERRORS):
            return
        logger.debug("dev server: error while handling a request", exc_info=True)

    def close_connections(self) -> None:
        with self.connections_lock:
            open_sockets = list(self.connections)
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the exporter's connection pool is part of what we test
    server_version = "prefactor-otel-devserver"
    sys_version = ""
    timeout = 120
    server: DevHTTPServer
    # The current request's hand-written answer, when a fault shapes it (a trickle then paces every answer).
    _hostile: HostileWriter | None = None

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without NODELAY, Nagle + delayed ACK costs 40 ms each.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(*CONNECTION_ERRORS):
            super().finish()

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except CONNECTION_ERRORS:
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        # Silent by default: the benchmark sends thousands of requests, and tests read `requests` instead.
        return

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    # ------------------------------------------------------------------ plumbing (body reading: BodyReader;
    # trickled, endless and dropped answers: HostileWriter)

    def _hostile_writer(self, rate: float | None = None, trickle_head: bool = True) -> HostileWriter:
        return HostileWriter(
            self.wfile,
            self.connection,
            stopping=self.server.stopping,
            count_bytes=self.server.site.traffic.count_fault_bytes,
            server_version=self.server_version,
            date=self.date_time_string,
            rate=rate,
            trickle_head=trickle_head,
        )

    def _send(
        self,
        status: int,
        body: JsonDict | bytes,
        *,
        headers: tuple[tuple[str, str], ...] = (),
        close: bool = False,
        content_type: str = "application/json",
    ) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
        if self._hostile is not None and self._hostile.trickles:
            extra = (*headers, ("Connection", "close")) if close else headers
            self.close_connection = self.close_connection or close
            if not self._hostile.send(status, data, headers=(("Content-Type", content_type), *extra)):
                self.close_connection = True
            return
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers:
                self.send_header(name, value)
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)
        except CONNECTION_ERRORS:
            self.close_connection = True

    def _check_auth(self) -> ApiError | None:
        header = self.headers.get("Authorization")
        if not header:
            return ApiError(401, "not_authenticated", "missing Authorization: Bearer <token> header")
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return ApiError(401, "not_authenticated", "Authorization header must be 'Bearer <token>'")
        if not hmac.compare_digest(value.strip().encode(), self.server.site.token.encode()):
            # Never echo what was sent: a wrong token is often a real token for another account.
            return ApiError(401, "bad_authtoken", "invalid API token")
        return None

    # ------------------------------------------------------------------ request flow

    def _dispatch(self) -> None:
        site = self.server.site
        method = self.command.upper()
        split = urlsplit(self.path)
        path = unquote(split.path)
        if len(path) > 1:
            path = path.rstrip("/")
        query = dict(parse_qsl(split.query, keep_blank_values=True))

        parsed: Any = {}
        decoded_size: int | None = None  # the body's size once decoded, when it was compressed

        def record(
            status: int, size: int, items: int | None = None, answer: JsonDict | None = None, injected: bool = False
        ) -> None:
            # Logged before the response is written: a test that got its answer must see its request.
            detail = None
            if site.traffic.describes:  # only a listener pays for the description
                detail = "injected fault" if injected else describe(status, parsed, answer, path == f"{API}/bulk")
            encoding = body_reader.encoding
            site.traffic.log(RequestLog(method, path, status, size, items, detail, encoding, decoded_size))

        self._hostile = None
        body_reader = BodyReader(self.rfile, self.headers)
        # Before faults, auth and the body: a rebinding or cross-origin request must not even consume a fault.
        refusal = guard.refusal(
            method,
            self.headers.get("Host"),
            self.headers.get("Origin"),
            self.headers.get("Sec-Fetch-Site"),
            site.host,
            site.allowed_hosts,
        )
        if refusal is not None:
            self._refuse(refusal, method, path, record, body_reader)
            return
        if not path.startswith("/_dev") and site.faults.take(method, path, before_body=True) is not None:
            record(0, 0, injected=True)
            self.close_connection = True
            self._hostile_writer().hold()
            return

        try:
            raw = body_reader.read(site.max_body_bytes)
        except BodyTooLarge as exc:
            size = exc.size if exc.size is not None else site.max_body_bytes + 1
            message = f"request body exceeds {site.max_body_bytes} bytes; split it into smaller requests"
            record(413, size, answer=error_body("bad_request", message))
            self._send(413, error_body("bad_request", message), close=True)
            return
        except BadRequest as exc:
            record(400, 0, answer=error_body("bad_request", str(exc)))
            self._send(400, error_body("bad_request", str(exc)), close=True)
            return

        size = len(raw)
        page = webpage.answer(method, path, self.headers.get("Host"), site.host, site.allowed_hosts)
        if page is not None:  # the page's files hold no data: no token
            record(page.status, size)
            return self._send(page.status, page.body, headers=page.headers, content_type=page.content_type)
        auth_error = self._check_auth()
        if auth_error is not None:
            record(401, size, answer=auth_error.body())
            self._send(auth_error.status, auth_error.body(), headers=(("WWW-Authenticate", "Bearer"),))
            return

        parse_error: str | None = None
        try:
            text = body_reader.decode(raw, site.max_body_bytes, site.refused_encodings)
            if text is not raw:
                decoded_size = len(text)
            if text.strip():
                parsed = json.loads(text, parse_constant=_reject_constant)
        except BodyTooLarge:
            message = f"decompressed body exceeds {site.max_body_bytes} bytes; split it into smaller requests"
            record(413, size, answer=error_body("bad_request", message))
            self._send(413, error_body("bad_request", message), close=True)
            return
        except UnsupportedEncoding as exc:
            # Before faults and the store: the body was never read as JSON, so nothing was processed.
            record(415, size, answer=error_body("unsupported_media_type", str(exc)))
            accepted = ", ".join(name for name in decodable_encodings() if name not in site.refused_encodings)
            headers = (("Accept-Encoding", accepted or "identity"),)  # RFC 7694: what this server does take
            self._send(415, error_body("unsupported_media_type", str(exc)), headers=headers)
            return
        except BadRequest as exc:
            parse_error = str(exc)
        except (ValueError, UnicodeDecodeError):
            parse_error = "body is not valid JSON"
        items = None
        if path == f"{API}/bulk" and isinstance(parsed, dict) and isinstance(parsed.get("items"), list):
            items = len(parsed["items"])

        # Faults act like a broken proxy in front of an authenticated API; /_dev stays reachable regardless.
        fault = None if path.startswith("/_dev") else site.faults.take(method, path)
        if fault is not None:
            self._hostile = hostile = self._hostile_writer(fault.trickle_bytes_per_s, fault.trickle_headers)
            if fault.delay_s:
                time.sleep(fault.delay_s)
            if not fault.commit_then_fail:
                if fault.endless_body or fault.body_bytes is not None:
                    status = fault.status or 200
                    record(status, size, items, injected=True)
                    self.close_connection = True
                    if fault.body_bytes is None:
                        hostile.send(status, None, headers=(("Content-Type", "application/json"),))
                    else:
                        hostile.send_filler(status, fault.body_bytes)
                    return
                if fault.drop_connection:
                    record(0, size, items, injected=True)
                    self.close_connection = True
                    hostile.drop()
                    return
                if fault.redirect_to is not None:
                    status = fault.status or 307
                    record(status, size, items, injected=True)
                    self._send(status, b"", headers=(("Location", fault.redirect_to),))
                    return
                if fault.status is not None:
                    self._send_fault(fault, record, size, items)
                    return

        if parse_error is not None:
            status, body = 400, error_body("bad_request", parse_error)
        else:
            try:
                key = self.headers.get("Idempotency-Key")
                status, body = route(site.store, site.faults, method, path, query, parsed, key)
            except Exception:  # a dev-server bug must answer 500, not kill the connection
                logger.exception("dev server: unexpected error handling %s %s", method, path)
                status, body = 500, error_body("unexpected", "unexpected dev server error")

        if fault is not None and fault.commit_then_fail:
            # The work above is committed; the client just never learns it.
            if fault.drop_connection:
                record(0, size, items, injected=True)
                self.close_connection = True
                hostile.drop()
                return
            self._send_fault(fault, record, size, items, default_status=500)
            return
        record(status, size, items, answer=body)
        self._send(status, body)

    def _refuse(self, refusal: guard.Refusal, method: str, path: str, record: Any, body_reader: BodyReader) -> None:
        """Answer a refused request (guard.py) and close: its body is read (bounded) only so the client gets the
        answer rather than a reset; it is never parsed."""
        size = 0
        with contextlib.suppress(BodyTooLarge, BadRequest):
            size = len(body_reader.read(self.server.site.max_body_bytes))
        body = error_body(refusal.code, refusal.message)
        record(refusal.status, size, answer=body)
        if webpage.is_page(method, path):  # a person in a browser: text, with the page's strict headers
            page = webpage.refused(refusal.status, refusal.message)
            self._send(page.status, page.body, headers=page.headers, content_type=page.content_type, close=True)
        else:
            self._send(refusal.status, body, close=True)

    def _send_fault(self, fault: Fault, record: Any, size: int, items: int | None, default_status: int = 500) -> None:
        status = fault.status or default_status
        headers: tuple[tuple[str, str], ...] = ()
        if fault.retry_after is not None:
            headers = (("Retry-After", fault.retry_after),)
        record(status, size, items, injected=True)
        if fault.body is not None:
            self._send(status, fault.body.encode(), headers=headers, content_type=_guess_type(fault.body))
        else:
            code = _DEFAULT_FAULT_CODES.get(status, "unexpected")
            self._send(status, error_body(code, f"injected fault: HTTP {status}"), headers=headers)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _guess_type(body: str) -> str:
    stripped = body.lstrip()
    if stripped.startswith(("{", "[")):
        return "application/json"
    if stripped.startswith("<"):
        return "text/html; charset=utf-8"
    return "text/plain; charset=utf-8"
