"""Transport: the module that does HTTP. One httpx client, bulk requests, retries, one deadline.

`send_bulk` sends one bulk request (already chunked by the caller with `chunk_encoded`) and retries it on
connection errors, timeouts, 408, 429 and 5xx with exponential backoff and full jitter, honouring
`Retry-After`, never past the caller's deadline. It returns every item's outcome; items missing from the
response were not processed (the server stops at the first error) and are the caller's to send again.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from json.encoder import encode_basestring as _json_string  # C: quotes and escapes one str
from typing import Any

import httpx
import pydantic_core
from opentelemetry import context as otel_context
from pydantic import ValidationError

from prefactor_otel._logging import RateLimitedLog, logger
from prefactor_otel.config import PrefactorConfig
from prefactor_otel.mapping.values import RawJson, as_dict
from prefactor_otel.models import (
    BULK_CREATE_SPAN,
    BULK_FINISH_INSTANCE,
    BULK_FINISH_SPAN,
    BULK_REGISTER,
    BULK_RESPONSE_FIELDS,
    BULK_START,
    ApiResponse,
    PfidGenerateDetails,
)
from prefactor_otel.outcomes import NOT_PROCESSED, SUCCESS, BulkResult, ItemOutcome

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0


def encode_item(item: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON. Raises ValueError for values JSON cannot carry at all (mapping prevents these).

    pydantic-core's serializer (Rust, already a dependency through pydantic) does the common case about 3x
    faster than the stdlib encoder; non-finite floats become "NaN"/"Infinity" strings as in `json_safe`. Lone
    surrogates (Python strings may hold them, UTF-8 cannot) make it refuse the item: the stdlib path then writes
    them as "?" rather than costing the span.
    """
    schema = item.get("agent_schema_version")
    if schema is not None:
        # Every register item carries the same ~10 KB schema set (one dict shared by the planner): encode it once.
        rest = _to_json({key: value for key, value in item.items() if key != "agent_schema_version"})
        separator = b"," if rest != b"{}" else b""
        return b'%s%s"agent_schema_version":%s}' % (rest[:-1], separator, _encoded_once(schema))
    details = item.get("details")
    if type(details) is dict:
        fast = _span_create(item, details)
        if fast is not None:
            return fast
        if any(type(value) is RawJson for value in details.values()):
            # Rare (a value neither string nor payload, or not UTF-8): decode the payloads, encode it all as usual.
            details = {key: as_dict(value) if type(value) is RawJson else value for key, value in details.items()}
            return _to_json({**item, "details": details})
    return _to_json(item)


def _span_create(item: dict[str, Any], details: dict[str, Any]) -> bytes | None:
    """An item with `details` (a span create) whose values are strings (ids, times, names) and encoded payloads,
    written without a serializer call: for objects this small the call costs more than the work (5.9 -> 4.2 us
    per span create). None when a value is of another type or cannot be UTF-8: the general path takes it."""
    text = ["{"]
    for key, value in item.items():
        if key != "details":
            if type(value) is not str:
                return None
            text.append(f"{_json_string(key)}:{_json_string(value)},")
    text.append('"details":{')
    separator = ""
    embedded: list[tuple[str, RawJson]] = []
    for key, value in details.items():
        if type(value) is str:
            text.append(f"{separator}{_json_string(key)}:{_json_string(value)}")
            separator = ","
        elif type(value) is RawJson:
            embedded.append((key, value))
        else:
            return None
    try:
        parts = ["".join(text).encode()]
        for key, value in embedded:
            parts += (f"{separator}{_json_string(key)}:".encode(), value)
            separator = ","
    except UnicodeEncodeError:
        return None
    parts.append(b"}}")
    return b"".join(parts)


def encode_json(value: dict[str, Any]) -> RawJson:
    """One JSON object, compact, for embedding later (see RawJson). Raises ValueError like encode_item."""
    return RawJson(_to_json(value))


def _to_json(value: dict[str, Any]) -> bytes:
    try:
        return pydantic_core.to_json(value, inf_nan_mode="strings")
    except pydantic_core.PydanticSerializationError:
        text = _ENCODER.encode(value)  # ValueError for what JSON cannot hold (a non-string key, a set, ...)
        return text.encode("utf-8", errors="replace")


# The fallback encoder: json.dumps with non-default arguments builds a new encoder per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_ENCODED_SCHEMAS: dict[int, tuple[object, bytes]] = {}


def _encoded_once(value: dict[str, Any]) -> bytes:
    cached = _ENCODED_SCHEMAS.get(id(value))
    if cached is not None and cached[0] is value:
        return cached[1]
    data = _to_json(value)
    if len(_ENCODED_SCHEMAS) >= 16:
        _ENCODED_SCHEMAS.clear()
    _ENCODED_SCHEMAS[id(value)] = (value, data)
    return data


def bulk_body(encoded_items: Sequence[bytes]) -> bytes:
    if len(encoded_items) < 2:
        return b'{"items":[' + b"".join(encoded_items) + b"]}"
    # One join over the whole body: wrapping a joined list would copy the megabyte-sized body twice.
    return b",".join([b'{"items":[' + encoded_items[0], *encoded_items[1:-1], encoded_items[-1] + b"]}"])


_BODY_OVERHEAD = len(bulk_body([]))


def chunk_encoded(encoded_items: Sequence[bytes], max_items: int, max_bytes: int) -> list[range]:
    """Split consecutive items into requests of at most max_items items and max_bytes bytes.

    Order is kept (parents before children). An item larger than max_bytes goes alone.
    """
    chunks: list[range] = []
    start = 0
    size = _BODY_OVERHEAD
    for index, encoded in enumerate(encoded_items):
        extra = len(encoded) + (1 if index > start else 0)
        if index > start and (index - start >= max_items or size + extra > max_bytes):
            chunks.append(range(start, index))
            start, size = index, _BODY_OVERHEAD
            extra = len(encoded)
        size += extra
    if start < len(encoded_items):
        chunks.append(range(start, len(encoded_items)))
    return chunks


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


def parse_retry_after(value: str | None, now_wall: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or HTTP-date); None if absent or invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now_wall is None else now_wall)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


class BulkTransport:
    def __init__(self, config: PrefactorConfig, *, sdk_header: str, client: httpx.Client | None = None) -> None:
        self._config = config
        self._sdk_header = sdk_header
        self._owns_client = client is None
        self._client = client or self._new_client()
        # Sent per request (not as client defaults) so a caller-supplied client authenticates too.
        self._headers = {
            "Authorization": f"Bearer {config.api_token.get()}",
            "X-Prefactor-SDK": sdk_header,
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": sdk_header,
        }
        self._stop = threading.Event()
        self._interrupt = threading.Event()
        self._auth_failed = False
        self._log = RateLimitedLog()
        self.counters: Counter[str] = Counter()

    def _new_client(self) -> httpx.Client:
        verify: bool | ssl.SSLContext = self._config.tls_verify
        if self._config.tls_verify and self._config.ca_bundle:
            verify = ssl.create_default_context(cafile=self._config.ca_bundle)
        return httpx.Client(
            follow_redirects=False,  # a redirect would carry the token to another origin
            timeout=httpx.Timeout(self._config.export_timeout),
            verify=verify,
        )

    def reset_after_fork(self) -> None:
        """A forked child must not share the parent's pooled sockets."""
        if self._owns_client:
            self._client = self._new_client()
        self._stop = threading.Event()
        self._interrupt = threading.Event()

    @property
    def auth_failed(self) -> bool:
        return self._auth_failed

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

    # ------------------------------------------------------------------ requests

    def send_bulk(self, encoded_items: Sequence[bytes], keys: Sequence[str], deadline: float) -> BulkResult:
        """One bulk request, retried inside the deadline; per-item outcomes for `keys`."""
        return self._post("/bulk", bulk_body(encoded_items), deadline, lambda r: self._bulk_outcomes(r, keys))

    def send_rest(self, item: dict[str, Any], deadline: float) -> BulkResult:
        """Send one bulk-shaped item as its REST call (for an action the bulk endpoint does not take)."""
        path, body = rest_request(item)
        key = item["idempotency_key"]
        return self._post(path, encode_item(body), deadline, lambda r: self._rest_outcome(r, key))

    def _post(
        self, path: str, body: bytes, deadline: float, on_ok: Callable[[httpx.Response], BulkResult | None]
    ) -> BulkResult:
        attempt = 0
        while True:
            if self._auth_failed:
                return BulkResult(error="auth")
            if self._stop.is_set():
                return BulkResult(error="shutdown")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return BulkResult(error="timeout")
            self.counters["requests"] += 1
            self.counters["bytes_sent"] += len(body)
            retry_after: float | None = None
            try:
                with suppress_instrumentation():
                    response = self._client.post(
                        self._config.api_base + path,
                        content=body,
                        headers=self._headers,
                        timeout=httpx.Timeout(remaining),
                    )
            except httpx.TransportError as exc:
                self.counters["connection_errors"] += 1
                self.counters["outcome:connection_error"] += 1
                self._log.log(
                    logging.WARNING, "conn", "Prefactor export: connection problem (%s), retrying", type(exc).__name__
                )
                status = None
            else:
                status = response.status_code
                self.counters[f"outcome:http_{status}"] += 1
                result = self._handle_status(response)
                if result is None and 200 <= status < 300:
                    result = on_ok(response)
                if result is not None:
                    return result
                retry_after = parse_retry_after(response.headers.get("retry-after"))
            # retryable
            attempt += 1
            self.counters["retries"] += 1
            delay = random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))
            if retry_after is not None:
                delay = retry_after
            remaining = deadline - time.monotonic()
            if delay >= remaining:
                self._log.log(
                    logging.WARNING,
                    "deadline",
                    "Prefactor export: gave up after %d attempt(s) within the export timeout (last: %s)",
                    attempt,
                    status if status is not None else "connection error",
                )
                return BulkResult(error="timeout", status_code=status)
            if self._stop.is_set() or self._interrupt.wait(delay):
                return BulkResult(error="shutdown" if self._stop.is_set() else "interrupted")

    def _handle_status(self, response: httpx.Response) -> BulkResult | None:
        """A final result for a non-2xx status, or None (2xx, or retryable: `_post` tells them apart)."""
        status = response.status_code
        if 200 <= status < 300:
            return None
        if status in (401, 403):
            if not self._auth_failed:
                self._auth_failed = True
                logger.error(
                    "Prefactor rejected the API token (HTTP %d); the exporter stops sending. "
                    "Check PREFACTOR_API_TOKEN and its scope.",
                    status,
                )
            return BulkResult(error="auth", status_code=status)
        if status in RETRYABLE_STATUS:
            self.counters[f"http_{status}"] += 1
            self._log.log(logging.WARNING, f"http{status}", "Prefactor export: HTTP %d, retrying", status)
            return None
        if 300 <= status < 400:
            self._log.log(
                logging.ERROR,
                "redirect",
                "Prefactor export: HTTP %d redirect not followed; check PREFACTOR_API_URL",
                status,
            )
            return BulkResult(error="redirect", status_code=status)
        if status == 413:
            return BulkResult(error="too_large", status_code=status)
        code, message = _error_fields(response)
        self._log.log(
            logging.ERROR,
            f"http{status}",
            "Prefactor export: request rejected with HTTP %d: %s: %s",
            status,
            code,
            message,
        )
        return BulkResult(error="rejected", status_code=status, code=code, message=message)

    def _bulk_outcomes(self, response: httpx.Response, keys: Sequence[str]) -> BulkResult | None:
        try:
            outputs = BULK_RESPONSE_FIELDS.validate_json(response.content)["outputs"]
        except ValidationError as exc:
            self.counters["contract_errors"] += 1
            self._log.log(
                logging.WARNING,
                "contract",
                "Prefactor export: the bulk response does not fit the API contract (%d error(s)), retrying",
                exc.error_count(),
            )
            return None
        outcomes: dict[str, ItemOutcome] = {}
        for key in keys:
            output = outputs.get(key)
            if output is None:
                outcomes[key] = NOT_PROCESSED
            elif output["status"] == "success":
                outcomes[key] = SUCCESS
            else:
                outcomes[key] = ItemOutcome("error", output.get("code"), output.get("message"))
        return BulkResult(outcomes=outcomes, status_code=response.status_code)

    def _rest_outcome(self, response: httpx.Response, key: str) -> BulkResult | None:
        try:
            parsed = ApiResponse[dict[str, Any]].model_validate_json(response.content)
        except ValidationError:
            self.counters["contract_errors"] += 1
            self._log.log(logging.WARNING, "contract", "Prefactor export: a REST response does not fit the contract")
            return None
        del parsed
        return BulkResult(outcomes={key: SUCCESS}, status_code=response.status_code)

    def generate_pfid(self, deadline: float) -> str | None:
        """Ask the server for one id of the account (its partition is the account's). None on failure."""
        remaining = deadline - time.monotonic()
        if remaining <= 0 or self._auth_failed:
            return None
        try:
            with suppress_instrumentation():
                response = self._client.post(
                    self._config.api_base + "/pfid/generate",
                    content=b'{"count":1}',
                    headers=self._headers,
                    timeout=httpx.Timeout(remaining),
                )
        except httpx.TransportError as exc:
            self._log.log(logging.WARNING, "pfid", "Prefactor: cannot reach the API for an id (%s)", type(exc).__name__)
            return None
        if response.status_code in (401, 403):
            self._handle_status(response)
            return None
        if response.status_code != 200:
            self._log.log(logging.WARNING, "pfid", "Prefactor: id generation failed with HTTP %d", response.status_code)
            return None
        try:
            parsed = ApiResponse[PfidGenerateDetails].model_validate_json(response.content)
        except ValidationError:
            self._log.log(logging.WARNING, "pfid", "Prefactor: id generation answer does not fit the API contract")
            return None
        return parsed.details.pfids[0] if parsed.details.pfids else None


def _error_fields(response: httpx.Response) -> tuple[str | None, str]:
    """code and message of an API error body; never echoes request headers."""
    try:
        data = response.json()
    except ValueError:
        return None, f"non-JSON body ({len(response.content)} bytes)"
    if isinstance(data, dict):
        return data.get("code"), str(data.get("message"))[:200]
    return None, "unexpected body"


def rest_request(item: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The REST path and body of a bulk item: path parameters leave the body, the rest stays as is."""
    action = item["_type"]
    body = {k: v for k, v in item.items() if k != "_type"}
    if action == BULK_REGISTER:
        return "/agent_instance/register", body
    if action in (BULK_START, BULK_FINISH_INSTANCE):
        instance_id = body.pop("agent_instance_id")
        verb = "start" if action == BULK_START else "finish"
        return f"/agent_instance/{instance_id}/{verb}", body
    if action == BULK_CREATE_SPAN:
        return "/agent_spans", body
    if action == BULK_FINISH_SPAN:
        span_id = body.pop("agent_span_id")
        return f"/agent_spans/{span_id}/finish", body
    raise ValueError(f"no REST form for bulk action {action!r}")
