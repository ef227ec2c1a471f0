"""Transport: the module that does HTTP. One httpx client, bulk requests, retries, one deadline.

`send_bulk` sends one bulk request (already chunked by the caller with `chunk_encoded`) and retries it on
connection errors, timeouts, 408, 429 and 5xx with exponential backoff and full jitter, honouring
`Retry-After`, never past the caller's deadline. Each POST body is compressed once per request by the
transport's `BodyCompression` (compression.py: zstd, gzip or none, and the encodings a server was found to refuse:
a 415, or a 400 the same request sent again uncompressed does not get, moves every later request down the ladder;
the refused request itself is sent again at once, so it is neither lost nor sent twice under another key). The TLS
context comes from tls.py (once per process; none for plain http). It returns every item's outcome; what an
answer means (status, outcomes, error bodies, a failure's cause) is read by answers.py: the transport holds an
`AnswerReader` (the auth latch, a rate-limited log) and hands it each answer.

The deadline is wall-clock for the whole request, answer included (see `netdeadline`), and `cap_deadline`
lowers every deadline at once, a request in flight included. Answers are streamed and read up to
MAX_RESPONSE_BYTES. Requests of the client built here go straight to its `httpx.HTTPTransport` (the proxy, the TLS
context and the deadline-aware network layer all live there): `httpx.Client` would add only redirects (never
followed), cookies (the API sets none) and its own log line, for ~200 µs per request.
With a caller-supplied `http_client` the network layer is the caller's: the deadline and
the cap are then checked between body chunks only, so one connect, one write or the wait for the headers can
each take up to the time left when the request started (httpx's per-operation timeout).

Threads: sends are serialized by the exporter's send lock (one sender at a time); `interrupt_waits`,
`resume_waits`, `cap_deadline` and `close` may be called from any thread (events and single assignments:
no lock). `get` (the run poll) may run on another thread meanwhile: the httpx client is thread-safe, the
deadline is thread-local, and `get` writes no counters. `counters` is written by the sender only (the transport
and its `AnswerReader`, on the sender's thread).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import httpx
from opentelemetry import context as otel_context
from pydantic import ValidationError

from prefactor_otel._logging import RateLimitedLog, logger
from prefactor_otel.config.options import PrefactorConfig
from prefactor_otel.model.http import ApiResponse, PfidGenerateDetails
from prefactor_otel.transport.answers import (
    MAX_RESPONSE_BYTES,
    AnswerReader,
    ReadAnswer,
    ResponseTooLarge,
    UnreadableResponse,
    UnusableProxy,
    connection_error_cause,
    decode_body,
    environment_proxy_setting,
    parse_retry_after,
    proxy_problem,
    usable_proxy,
)
from prefactor_otel.transport.compression import IDENTITY, BodyCompression
from prefactor_otel.transport.netdeadline import SLICE_S, DeadlineBackend, install_deadline_backend
from prefactor_otel.transport.outage import OutageReport
from prefactor_otel.transport.outcomes import BulkResult
from prefactor_otel.transport.tls import tls_context

# The wire form lives in its own module; re-exported here, where the exporter and older code import it from.
from prefactor_otel.transport.wire import bulk_body as bulk_body
from prefactor_otel.transport.wire import chunk_encoded as chunk_encoded
from prefactor_otel.transport.wire import encode_item as encode_item
from prefactor_otel.transport.wire import encode_json as encode_json
from prefactor_otel.transport.wire import rest_request as rest_request

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
# When the backoff would overrun the deadline, the last attempt keeps half the time left, and at least this.
LAST_ATTEMPT_MIN_S = 0.25


@contextmanager
def suppress_instrumentation() -> Iterator[None]:
    """Our own HTTP calls must not become spans, or an instrumented httpx would feed the exporter itself."""
    ctx = otel_context.set_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY, True)
    ctx = otel_context.set_value(otel_context._SUPPRESS_HTTP_INSTRUMENTATION_KEY, True, ctx)
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


class BulkTransport:
    def __init__(self, config: PrefactorConfig, *, sdk_header: str, client: httpx.Client | None = None) -> None:
        self._config = config
        parsed = httpx.URL(config.api_base)
        host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host  # an IPv6 address reads as in a URL
        self._host = f"{host}:{parsed.port}" if parsed.port else host  # never the token: it is not in URLs
        self.outage = OutageReport(self._host)  # says once when delivery resumes after "cannot reach"
        self._what_happens_next = (
            "the items are kept on disk and re-sent, also by the next process with this configuration"
            if config.spool
            else "the items stay in memory and are sent again later (PREFACTOR_SPOOL is off: lost at exit)"
        )
        self._sdk_header = sdk_header
        self._owns_client = client is None
        self._ceiling: float | None = None
        self._network: DeadlineBackend | None = None
        # Set when the proxy the environment sets for the API URL cannot be used: then nothing is sent (every
        # request fails at once, error "proxy"), and the exporter keeps the items as in an outage.
        self.proxy_error: str | None = None
        self._proxy_note = ""  # ", through the proxy in HTTPS_PROXY": for connection errors
        # Our own client's transport, which our requests go to directly (see `_request`); None with a caller's client.
        self._transport: httpx.HTTPTransport | None = None
        self._client = client or self._new_client()
        # The bulk URL, parsed once: every request but the rare REST call and read goes there.
        self._bulk_url = httpx.URL(config.api_base + "/bulk")
        # Sent per request (not as client defaults) so a caller-supplied client authenticates too.
        self._headers = {
            "Authorization": f"Bearer {config.api_token.get()}",
            "X-Prefactor-SDK": sdk_header,
            "Content-Type": "application/json",
            "Accept": "application/json",
            # Answers are small; identity keeps a compressed answer from inflating past the size cap.
            "Accept-Encoding": "identity",
            "User-Agent": sdk_header,
        }
        self._stop = threading.Event()
        self._interrupt = threading.Event()
        self._log = RateLimitedLog()
        self.counters: Counter[str] = Counter()
        self._answers = AnswerReader(self.counters)
        self.compression = BodyCompression(config.compression, self.counters)
        # One header set per Content-Encoding sent: the dicts are built once, not per request.
        self._encoded_headers = {
            encoding: {**self._headers, "Content-Encoding": encoding} for encoding in ("gzip", "zstd")
        }
        # The head of our own client's requests (`_request`), as httpx.Headers, once per Content-Encoding: what
        # httpx.Request(content=...) writes (Host first, then ours, then Content-Length), without its per-request
        # header normalization and lookups (21 -> 4.5 us per request). Host is httpx's own value for our URLs.
        host = self._bulk_url.netloc.decode("ascii")
        self._wire_headers = {
            encoding: httpx.Headers([("Host", host), *headers.items()])
            for encoding, headers in ((IDENTITY, self._headers), *self._encoded_headers.items())
        }

    def _new_client(self) -> httpx.Client:
        self.proxy_error = None
        self._proxy_note = ""
        setting = environment_proxy_setting(self._config.api_base)
        verify = tls_context(self._config, None if setting is None else setting[1])
        # Our own transport (so the deadline-aware network layer goes under it): httpx then ignores the proxy
        # variables, so the one that applies to the API URL is passed explicitly. One it cannot use leaves the
        # client without a proxy, never used: `proxy_error` stops every request.
        proxy = None
        if setting is not None:
            variable, value = setting
            try:
                proxy = usable_proxy(variable, value)
                transport = httpx.HTTPTransport(verify=verify, proxy=proxy)
            except UnusableProxy as exc:
                self.proxy_error = str(exc)
                proxy = None
            except Exception as exc:  # what httpx itself refuses (a version that checks more than we do)
                self.proxy_error = proxy_problem(variable, value, f"httpx refuses it: {type(exc).__name__}")
                proxy = None
            else:
                self._proxy_note = f" through the proxy in {variable}"
        if proxy is None:
            transport = httpx.HTTPTransport(verify=verify)
        self._network = install_deadline_backend(transport)
        self._transport = transport
        if self._network is None:
            logger.debug("Prefactor: this httpx version takes no deadline-aware network layer; per-operation timeouts")
        else:
            self._network.ceiling = self._ceiling
        return httpx.Client(
            transport=transport,
            follow_redirects=False,  # a redirect would carry the token to another origin
            timeout=httpx.Timeout(self._config.export_timeout),
        )

    def reset_after_fork(self) -> None:
        """A forked child must not share the parent's pooled sockets, nor a lock another thread held at the fork;
        it counts its own requests and starts without the parent's exit ceiling."""
        self._ceiling = None
        if self._owns_client:
            self._client = self._new_client()
        self._stop = threading.Event()
        self._interrupt = threading.Event()
        self._log = RateLimitedLog()
        self.outage = OutageReport(self._host)
        self.counters = Counter()
        self._answers.reset_after_fork(self.counters)
        self.compression.reset_after_fork(self.counters)

    @property
    def auth_failed(self) -> bool:
        return self._answers.auth_failed

    @property
    def auth_status(self) -> int | None:
        """The status of the answer that refused the token (401 or 403), or None."""
        return self._answers.auth_status

    @property
    def stopped_reason(self) -> str | None:
        """Why this transport sends nothing more in this process, or None: "auth" (the server refused the token),
        "proxy" (the proxy the environment sets cannot be used). Both are fixed only by a new process."""
        if self._answers.auth_failed:
            return "auth"
        return "proxy" if self.proxy_error is not None else None

    def close(self) -> None:
        self._stop.set()
        if self._owns_client:
            self._client.close()

    def interrupt_waits(self) -> None:
        """Wake every backoff sleep now (shutdown must not wait for another thread's retry ladder).

        The interrupted sender gives up its request ("interrupted"); the items stay with the planner and the
        shutting-down caller, once it holds the send lock, calls `resume_waits` and sends them itself.
        """
        self._interrupt.set()

    def resume_waits(self) -> None:
        self._interrupt.clear()

    def cap_deadline(self, at: float | None) -> None:
        """No request, retry or backoff sleep goes past `at` (time.monotonic()) from now on; None lifts the cap.

        Applies to a request already in flight too: with the client built here it ends within about SLICE_S of
        the ceiling (with a caller-supplied client, at its next body chunk or socket timeout). Call it when the
        process starts exiting, from any thread.
        """
        self._ceiling = at
        if self._network is not None:
            self._network.ceiling = at

    def _deadline(self, deadline: float) -> float:
        ceiling = self._ceiling
        return deadline if ceiling is None else min(deadline, ceiling)

    # ------------------------------------------------------------------ requests

    def send_bulk(self, encoded_items: Sequence[bytes], keys: Sequence[str], deadline: float) -> BulkResult:
        """One bulk request, retried inside the deadline; per-item outcomes for `keys`."""
        return self._post(
            "/bulk",
            bulk_body(encoded_items),
            deadline,
            lambda status, answer: self._answers.bulk_outcomes(status, answer, keys),
        )

    def send_rest(self, item: dict[str, Any], deadline: float) -> BulkResult:
        """Send one bulk-shaped item as its REST call (for an action the bulk endpoint does not take)."""
        path, body = rest_request(item)
        key = item["idempotency_key"]
        return self._post(
            path, encode_item(body), deadline, lambda status, answer: self._answers.rest_outcome(status, answer, key)
        )

    def get(self, path: str, deadline: float) -> ReadAnswer:
        """One GET of an API path (e.g. "/agent_instance/<id>") by `deadline`: the answer's status and body, or,
        on a connection problem, a deadline reached or an answer that is not one, status None and an `error` that
        names the host and the cause. Not retried, and a 401/403 is only returned: a read the token may not make
        must not stop the exporter's writes."""
        if self.proxy_error is not None:
            return ReadAnswer(None, b"", f"cannot reach {self._host}: {self.proxy_error}")
        try:
            response, answer = self._request(path, b"", deadline, method="GET")
        except httpx.TransportError as exc:
            cause = connection_error_cause(exc)
            return ReadAnswer(None, b"", f"cannot reach {self._host}{self._proxy_note}: {cause}")
        except (ResponseTooLarge, UnreadableResponse) as exc:
            return ReadAnswer(None, b"", f"unreadable answer from {self._host} ({type(exc).__name__}: {exc})")
        return ReadAnswer(response.status_code, answer)

    def _request(
        self, path: str, body: bytes, deadline: float, method: str = "POST", encoding: str = IDENTITY
    ) -> tuple[httpx.Response, bytes]:
        """Send and read the whole answer by `deadline` (wall clock), at most MAX_RESPONSE_BYTES of it. `body` is
        already in `encoding` (its Content-Encoding).

        Raises httpx.TransportError (a timeout once the deadline passes), ResponseTooLarge or UnreadableResponse;
        leaving early closes the response, which discards its connection.
        """
        remaining = self._deadline(deadline) - time.monotonic()
        if remaining <= 0:
            raise httpx.ConnectTimeout("request deadline reached before sending")
        network = self._network
        headers = self._headers if encoding == IDENTITY else self._encoded_headers[encoding]
        content = body if method == "POST" else None
        with suppress_instrumentation(), network.bounded(deadline) if network is not None else nullcontext():
            transport = self._transport
            if transport is not None:
                # Our own client: straight to its transport. httpx.Client adds nothing this request needs (no
                # redirects are followed, no auth flow, no mounts: the transport is the only one) and costs ~200 µs
                # per request (benchmarks/wire_cost.py --http), mostly its cookie jar (the API sets no cookies).
                url = self._bulk_url if path == "/bulk" else httpx.URL(self._config.api_base + path)
                # The head httpx.Request(content=...) would write, built from the headers made once (`stream=`
                # makes httpx add none): Content-Length last, for a POST only, as httpx writes it.
                wire_headers = self._wire_headers[encoding].copy()
                if content is not None:
                    wire_headers["Content-Length"] = str(len(content))
                request = httpx.Request(
                    method,
                    url,
                    headers=wire_headers,
                    stream=httpx.ByteStream(content or b""),
                    extensions={
                        "timeout": {"connect": remaining, "read": remaining, "write": remaining, "pool": remaining}
                    },
                )
                response = transport.handle_request(request)
                response.request = request
            else:
                response = self._client.send(
                    self._client.build_request(
                        method,
                        self._config.api_base + path,
                        content=content,
                        headers=headers,
                        timeout=httpx.Timeout(remaining),
                    ),
                    stream=True,
                )
            try:
                return response, self._read_answer(response, deadline)
            finally:
                response.close()

    def _read_answer(self, response: httpx.Response, deadline: float) -> bytes:
        """The whole answer by `deadline`, at most MAX_RESPONSE_BYTES, without its Content-Encoding."""
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
            raise ResponseTooLarge(f"declared {declared} bytes")
        parts: list[bytes] = []
        size = 0
        for chunk in response.iter_raw():
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise ResponseTooLarge(f"more than {size} bytes")
            # Also bounds a caller-supplied client, whose sockets are not ours to slice.
            if time.monotonic() >= self._deadline(deadline):
                raise httpx.ReadTimeout("request deadline reached while reading the answer")
            parts.append(chunk)
        raw = parts[0] if len(parts) == 1 else b"".join(parts)
        return decode_body(raw, response.headers.get("content-encoding"))

    def _post(
        self,
        path: str,
        body: bytes,
        deadline: float,
        on_ok: Callable[[int, bytes], BulkResult | None],
    ) -> BulkResult:
        attempt = 0
        shortened = False  # a backoff was cut short to fit a last attempt in the budget
        last_failure = "no answer"
        encoding, wire_body = self.compression.compress(body)
        # (encoding, status): a 400 or 422 came to a body in that encoding; this one goes uncompressed to find out why
        probing: tuple[str, int] | None = None
        while True:
            if self._answers.auth_failed:
                return BulkResult(error="auth")
            if self.proxy_error is not None:
                return BulkResult(error="proxy")  # nothing sent: reported once by the exporter
            if self._stop.is_set():
                return BulkResult(error="shutdown")
            if self._deadline(deadline) <= time.monotonic():
                return BulkResult(error="timeout")
            self.counters["requests"] += 1
            self.counters["bytes_sent"] += len(wire_body)
            self.counters["bytes_uncompressed"] += len(body)
            retry_after: float | None = None
            status: int | None = None
            try:
                response, answer = self._request(path, wire_body, deadline, encoding=encoding)
            except httpx.TransportError as exc:
                self.counters["connection_errors"] += 1
                self.counters["outcome:connection_error"] += 1
                last_failure = connection_error_cause(exc)
                self._log.log(
                    logging.WARNING,
                    "conn",
                    "Prefactor export: cannot reach %s%s: %s; retrying",
                    self._host,
                    self._proxy_note,
                    last_failure,
                )
                self.outage.failed()
            except (ResponseTooLarge, UnreadableResponse) as exc:
                self._answers.count_unreadable(exc)
            else:
                status = response.status_code
                self.counters[f"outcome:http_{status}"] += 1
                if encoding != IDENTITY and status in (400, 415, 422):
                    # The encoding may be what the server refuses: 415 says so; a 400 or 422 (a server parsing the
                    # compressed bytes as JSON) is asked again uncompressed. At once, no backoff; at most once per
                    # step of the ladder, so this ends.
                    if status == 415:
                        self.compression.refuse(encoding, "HTTP 415")
                        encoding, wire_body = self.compression.compress(body)
                    else:
                        probing = (encoding, status)
                        encoding, wire_body = IDENTITY, body
                    continue
                if probing is not None:
                    if status != probing[1]:
                        self.compression.refuse(
                            probing[0], f"HTTP {probing[1]} to it, not to the same request uncompressed"
                        )
                    probing = None
                result = self._answers.status_result(status, answer)
                if result is None and 200 <= status < 300:
                    self.outage.answered()
                    result = on_ok(status, answer)
                if result is not None:
                    return result
                retry_after = parse_retry_after(response.headers.get("retry-after"))
            # retryable
            attempt += 1
            self.counters["retries"] += 1
            delay = random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))
            if retry_after is not None:
                delay = retry_after
            remaining = self._deadline(deadline) - time.monotonic()
            if delay > remaining - LAST_ATTEMPT_MIN_S:
                # The full wait does not fit. Once per request, wait what the budget affords and try a last time
                # with the rest (a short 5xx burst at exit must not cost the run); else give up now.
                if shortened or remaining <= 0:
                    self._log.log(
                        logging.WARNING,
                        "deadline",
                        "Prefactor export: %s did not take the items within the export timeout (%d attempt(s), "
                        "last: %s); %s",
                        self._host,
                        attempt,
                        f"HTTP {status}" if status is not None else last_failure,
                        self._what_happens_next,
                    )
                    return BulkResult(error="timeout", status_code=status)
                shortened = True
                attempt_time = max(remaining / 2, LAST_ATTEMPT_MIN_S)
                delay = max(0.0, min(delay, remaining - attempt_time))
            if self._backoff(delay):
                return BulkResult(error="shutdown" if self._stop.is_set() else "interrupted")

    def _backoff(self, seconds: float) -> bool:
        """Sleep `seconds`, cut short by a ceiling set meanwhile; True when woken by interrupt_waits or close."""
        end = time.monotonic() + seconds
        while True:
            ceiling = self._ceiling
            left = (end if ceiling is None else min(end, ceiling)) - time.monotonic()
            if left <= 0:
                return False
            if self._interrupt.wait(min(left, SLICE_S)) or self._stop.is_set():
                return True

    def generate_pfid(self, deadline: float) -> str | None:
        """Ask the server for one id of the account (its partition is the account's). None on failure.

        One attempt, under the same wall-clock deadline, ceiling and answer size cap as the bulk requests."""
        if self._answers.auth_failed or self.proxy_error is not None or self._deadline(deadline) <= time.monotonic():
            return None
        try:
            response, answer = self._request("/pfid/generate", b'{"count":1}', deadline)
        except httpx.TransportError as exc:
            self._log.log(
                logging.WARNING,
                "pfid",
                "Prefactor: cannot reach %s for an id (%s); spans are kept meanwhile",
                self._host,
                connection_error_cause(exc),
            )
            return None
        except (ResponseTooLarge, UnreadableResponse) as exc:
            self._answers.count_unreadable(exc)
            return None
        if response.status_code in (401, 403):
            self._answers.status_result(response.status_code, answer)
            return None
        if response.status_code != 200:
            self._log.log(logging.WARNING, "pfid", "Prefactor: id generation failed with HTTP %d", response.status_code)
            return None
        try:
            parsed = ApiResponse[PfidGenerateDetails].model_validate_json(answer)
        except ValidationError:
            self._log.log(logging.WARNING, "pfid", "Prefactor: id generation answer does not fit the API contract")
            return None
        return parsed.details.pfids[0] if parsed.details.pfids else None
