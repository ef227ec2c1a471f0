"""What an answer from the Prefactor API means: its status (final, retryable, auth), each item's outcome, an error
body's code and message, the cause of a connection failure, a Content-Encoding, a Retry-After; and the proxy the
environment sets for the API URL (and whether httpx can use it); a read's answer (`ReadAnswer`). client.py sends
and retries; this module only reads.

Items missing from a bulk answer were not processed (the server stops at the first error): they are
NOT_PROCESSED, the caller's to send again. A bulk answer is read by msgspec (a dependency: it skips the
objects the API echoes per item without building them), and by pydantic-core's TypeAdapter where msgspec is
missing (a broken install) and whenever it is unsure (not UTF-8, anything it refuses): the same outcomes and
counters either way (docs/wire.md, "Reading answers"; the decoder is built once at import and is thread-safe).

`AnswerReader` is a part `BulkTransport` (client.py) holds and calls with each answer it gets. It owns the auth
latch (`auth_failed`, `auth_status`) and its rate-limited log, and counts into the transport's `counters` (given
at construction, given again after a fork). It runs on the thread that sent the request: the sender, serialized
by the exporter's send lock, so `counters` takes no lock. `auth_failed` (and `auth_status`, set just before it)
is set once, here, and read from any thread (a single assignment: no lock); the pipeline reports the refusal,
knowing what became of the items. The functions are pure and called from any thread.
"""

from __future__ import annotations

import email.utils
import importlib
import importlib.util
import json
import logging
import os
import re
import socket
import ssl
import time
import urllib.parse
import urllib.request
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from pydantic import ValidationError

from prefactor_otel._logging import RateLimitedLog
from prefactor_otel.model.http import BULK_RESPONSE_FIELDS, ApiResponse
from prefactor_otel.transport.outcomes import NOT_PROCESSED, SUCCESS, BulkResult, ItemOutcome, terminate_reason

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# A bulk answer is one small output per item (about 200 bytes each, a few hundred per request): 8 MiB is generous.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024


class ResponseTooLarge(Exception):
    """The answer exceeds MAX_RESPONSE_BYTES (declared or read so far): not a Prefactor answer."""


class UnreadableResponse(Exception):
    """The answer's Content-Encoding is one we did not ask for and cannot decode within the size cap."""


@dataclass(frozen=True)
class ReadAnswer:
    """What one read (`BulkTransport.get`) got: the `status` and `body` of the answer, or, when no answer came,
    status None, an empty body and `error`, which names the host and the cause a user can act on
    ("cannot reach 127.0.0.1:8787: connection refused")."""

    status: int | None
    body: bytes
    error: str | None = None


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


def connection_error_cause(exc: BaseException) -> str:
    """What a connection failure was, in words a user can act on: "connection refused", "name not resolved", "TLS
    error (...)", "timed out", else the exception's type. Walks the chain httpx wraps the socket error in."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, socket.gaierror):
            return "name not resolved"
        if isinstance(current, ssl.SSLError):
            reason = getattr(current, "reason", None) or type(current).__name__
            return f"TLS error ({str(reason).lower().replace('_', ' ')})"
        if isinstance(current, (TimeoutError, socket.timeout, httpx.TimeoutException)):
            return "timed out"
        current = current.__cause__ or current.__context__
    text = str(exc).lower()
    for marker, cause in (
        ("refused", "connection refused"),
        ("name or service", "name not resolved"),
        ("nodename nor servname", "name not resolved"),
        ("certificate", "TLS error"),
    ):
        if marker in text:
            return cause
    return type(exc).__name__


class AnswerReader:
    """What one answer (its status and body) means for the request that got it: a final result, or None (retry,
    or read the 2xx body); counted and logged. Latches the token's refusal: once an answer is 401/403,
    `auth_failed` stays True."""

    def __init__(self, counters: Counter[str], *, fast: bool = True) -> None:
        self.counters = counters  # the transport's
        # msgspec's decoder of bulk answers when installed (`_fast_decoder`); `fast=False` reads every answer with the
        # TypeAdapter alone (the reference the tests compare the fast reader with).
        self._fast_decoder: Any = _FAST_DECODER if fast else None
        self._log = RateLimitedLog()
        self.auth_failed = False
        self.auth_status: int | None = None  # the status of the answer that refused the token (401 or 403)

    def reset_after_fork(self, counters: Counter[str]) -> None:
        """A forked child counts into its transport's new counters and logs through a new lock; a refused token
        stays refused."""
        self.counters = counters
        self._log = RateLimitedLog()

    def count_unreadable(self, exc: Exception) -> None:
        self.counters["contract_errors"] += 1
        reason = "response_too_large" if isinstance(exc, ResponseTooLarge) else "response_unreadable"
        self.counters[reason] += 1
        self.counters[f"outcome:{reason}"] += 1
        self._log.log(
            logging.WARNING,
            reason,
            "Prefactor export: the answer is not a Prefactor answer (%s: %s; at most %d bytes are read); "
            "connection discarded",
            reason,
            exc,
            MAX_RESPONSE_BYTES,
        )

    def status_result(self, status: int, answer: bytes) -> BulkResult | None:
        """A final result for a non-2xx status, or None (2xx, or retryable: the caller tells them apart)."""
        if 200 <= status < 300:
            return None
        if status in (401, 403):
            if not self.auth_failed:
                # Reported once by the pipeline, which knows what became of the items (kept on disk or dropped).
                self.auth_status = status
                self.auth_failed = True
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
        code, message = error_fields(answer)
        self._log.log(
            logging.ERROR,
            f"http{status}",
            "Prefactor export: request rejected with HTTP %d: %s: %s",
            status,
            code,
            message,
        )
        return BulkResult(error="rejected", status_code=status, code=code, message=message)

    def bulk_outcomes(self, status: int, answer: bytes, keys: Sequence[str]) -> BulkResult | None:
        fast = _fast_outputs(self._fast_decoder, answer)
        if fast is not None:
            return BulkResult(outcomes=_fast_outcomes(fast, keys), status_code=status)
        try:
            outputs = BULK_RESPONSE_FIELDS.validate_json(answer)["outputs"]
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
                continue
            if output["status"] == "success":
                outcome = SUCCESS
            else:
                outcome = ItemOutcome("error", output.get("code"), output.get("message"))
            if "control" in output:  # rare: only answers in a run Prefactor terminated carry it
                outcome = with_control(outcome, output)
            outcomes[key] = outcome
        return BulkResult(outcomes=outcomes, status_code=status)

    def rest_outcome(self, status: int, answer: bytes, key: str) -> BulkResult | None:
        try:
            parsed = ApiResponse[dict[str, Any]].model_validate_json(answer)
        except ValidationError:
            self.counters["contract_errors"] += 1
            self._log.log(logging.WARNING, "contract", "Prefactor export: a REST response does not fit the contract")
            return None
        outcome = with_control(SUCCESS, parsed.model_extra)  # a span answer's top-level `control`
        return BulkResult(outcomes={key: outcome}, status_code=status)


def _fast_decoder() -> Any:
    """msgspec's JSON decoder of what `bulk_outcomes` reads of a bulk answer (BulkOutputFields' rules: `status`
    "success" or "error", `code`, `message` and `control` any JSON value, every other field skipped without
    building it), or None when msgspec cannot be imported (the TypeAdapter then reads every answer; msgspec is a
    dependency, and the package's span records are msgspec Structs: mapping/payload.py).

    Why: Prefactor's API echoes each item's whole object (a span create's agent span, payloads included), so a
    request's answer is about as large as the request. pydantic-core builds its whole tree before validating;
    msgspec skips what it is not asked for: 0.26x the adapter's time on the realistic workload's echoed answers
    (docs/wire.md, "Reading answers")."""
    try:
        msgspec = importlib.import_module("msgspec")
    except ImportError:
        return None
    output = msgspec.defstruct(
        "BulkOutputFields",
        [("status", Literal["success", "error"]), ("code", Any, None), ("message", Any, None), ("control", Any, None)],
        gc=False,  # one per item of the answer: not a container the collector counts (decoded JSON holds no cycle)
    )
    outputs: Any = dict.__class_getitem__((str, output))  # dict[str, output]: a type made at run time
    return msgspec.json.Decoder(msgspec.defstruct("BulkResponseFields", [("outputs", outputs)], gc=False))


_FAST_DECODER = _fast_decoder()
# What makes the fast reader unsure: msgspec's refusals (its DecodeError and ValidationError are MsgspecErrors), its
# nesting bound, and bytes that are not UTF-8 (checked first: msgspec does not check the strings it skips).
_FAST_UNSURE: tuple[type[BaseException], ...] = (
    (importlib.import_module("msgspec").MsgspecError, RecursionError, UnicodeDecodeError)
    if _FAST_DECODER is not None
    else ()
)


def _fast_outputs(decoder: Any, answer: bytes) -> dict[str, Any] | None:
    """A bulk answer's outputs read by msgspec, or None: msgspec is not installed, or it refused the answer, which
    the TypeAdapter then reads as before (what both refuse is refused, counted, once; what only msgspec refuses,
    such as NaN in a skipped field, the adapter takes). The one known difference: the adapter refuses valid JSON
    nested deeper than pydantic-core's bound (~200 levels) anywhere in the answer, msgspec only past Python's
    recursion limit (our own payloads stop at 64 levels: mapping/limits.py)."""
    if decoder is None:
        return None
    try:
        answer.decode("utf-8")  # malformed JSON (RFC 8259: UTF-8) the adapter refuses; ~17 us per 300 KB
        outputs: dict[str, Any] = decoder.decode(answer).outputs
    except _FAST_UNSURE:
        return None
    return outputs


def _fast_outcomes(outputs: dict[str, Any], keys: Sequence[str]) -> dict[str, ItemOutcome]:
    """Each key's outcome from msgspec's outputs: the same rules as `bulk_outcomes`' loop over the adapter's."""
    outcomes: dict[str, ItemOutcome] = {}
    get = outputs.get
    for key in keys:
        output = get(key)
        if output is None:
            outcomes[key] = NOT_PROCESSED
            continue
        outcome = SUCCESS if output.status == "success" else ItemOutcome("error", output.code, output.message)
        if output.control is not None:  # rare; an absent and a null `control` both terminate nothing
            outcome = with_control(outcome, {"control": output.control})
        outcomes[key] = outcome
    return outcomes


def with_control(outcome: ItemOutcome, answer: object) -> ItemOutcome:
    """The outcome, marked when the answer tells the run to terminate (see outcomes.terminate_reason)."""
    terminate, reason = terminate_reason(answer)
    return outcome._replace(terminate=True, terminate_reason=reason) if terminate else outcome


def decode_body(raw: bytes, content_encoding: str | None) -> bytes:
    """The answer's bytes without its Content-Encoding, inflated to at most MAX_RESPONSE_BYTES (we ask for
    identity; a server compressing anyway must not inflate a small body into gigabytes)."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise UnreadableResponse(f"unsupported Content-Encoding {encoding[:40]!r}")
    wbits = zlib.MAX_WBITS | 16 if "gzip" in encoding else zlib.MAX_WBITS
    try:
        inflated = zlib.decompressobj(wbits).decompress(raw, MAX_RESPONSE_BYTES + 1)
    except zlib.error as exc:
        raise UnreadableResponse(f"invalid {encoding} body") from exc
    if len(inflated) > MAX_RESPONSE_BYTES:
        raise ResponseTooLarge(f"{encoding} body inflates past {MAX_RESPONSE_BYTES} bytes")
    return inflated


PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")


class UnusableProxy(ValueError):
    """The proxy the environment sets for the API URL cannot be used; the message names the variable, the
    (masked) value, why, and the fix."""


def environment_proxy(url: str) -> str | None:
    """The proxy the environment (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY) sets for `url`, or None."""
    setting = environment_proxy_setting(url)
    if setting is None:
        return None
    proxy = setting[1]
    return proxy if "://" in proxy else "http://" + proxy


def environment_proxy_setting(url: str) -> tuple[str, str] | None:
    """(variable, value) of the proxy the environment sets for `url` (urllib's rules: a lowercase variable wins
    over its uppercase form, the scheme's before ALL_PROXY, NO_PROXY bypasses), or None."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    key = parts.scheme if proxies.get(parts.scheme) else "all"
    proxy = proxies.get(key)
    # proxy_bypass_environment is CPython's (every version we support) but not in typeshed's urllib.request.
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]  # undocumented, not in the stubs
    if not proxy or (parts.hostname and bypass(parts.hostname, proxies)):
        return None
    variable = next(
        (name for name in (f"{key}_proxy", f"{key.upper()}_PROXY") if os.environ.get(name) == proxy),
        f"{key.upper()}_PROXY",
    )
    return variable, proxy


def masked_proxy(value: str) -> str:
    """A proxy value fit for a log line: any user:password part masked, at most 100 characters."""
    masked = re.sub(r"^([^/]*//)?[^/@]*@", lambda m: (m.group(1) or "") + "***@", value.strip())
    return masked if len(masked) <= 100 else masked[:97] + "..."


def usable_proxy(variable: str, value: str) -> str:
    """The proxy URL to give httpx for `value` (set in `variable`), or UnusableProxy saying why and what to do."""
    proxy = value.strip() if "://" in value else "http://" + value.strip()
    why = None
    try:
        parsed = httpx.URL(proxy)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        why = f"not a URL: {str(exc)[:80]}"
    else:
        if parsed.scheme not in PROXY_SCHEMES:
            why = f"scheme {parsed.scheme[:20]!r} is not one of {', '.join(PROXY_SCHEMES)}"
        elif not parsed.host:
            why = "no host"
        elif "%" in parsed.host:  # httpx escapes what no host name may hold ("[bad", a space)
            why = f"{parsed.host[:40]!r} is not a host name"
        elif parsed.port is not None and not 0 < parsed.port < 65536:
            why = f"port {parsed.port} is out of range"
        elif parsed.scheme.startswith("socks") and importlib.util.find_spec("socksio") is None:
            why = "a SOCKS proxy needs the socksio package: pip install 'httpx[socks]'"
    if why is not None:
        raise UnusableProxy(proxy_problem(variable, value, why))
    return proxy


def proxy_problem(variable: str, value: str, why: str) -> str:
    """One sentence: which variable, its masked value, why it cannot be used, and the fix."""
    return (
        f"the proxy {variable}={masked_proxy(value)!r} cannot be used ({why}): set {variable} to http://host:port, "
        f"https://host:port or socks5://host:port, or unset it (or list the API host in NO_PROXY) to connect directly"
    )


def error_fields(answer: bytes) -> tuple[str | None, str]:
    """code and message of an API error body; never echoes request headers."""
    try:
        data = json.loads(answer)
    except ValueError:
        return None, f"non-JSON body ({len(answer)} bytes)"
    if isinstance(data, dict):
        return data.get("code"), str(data.get("message"))[:200]
    return None, "unexpected body"
