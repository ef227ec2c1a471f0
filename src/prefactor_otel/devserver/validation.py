"""The dev server's API error answers and the field checks every action shares.

Pure functions and an exception: no state of their own except `_field_sink`, a thread-local where `_check_fields`
reports unknown fields (`Findings.context`, findings.py, points it at the action the calling thread runs). Called by
the server's request threads and the test thread, under the store's lock or without it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from prefactor_otel.devserver.timefmt import parse_timestamp
from prefactor_otel.model import ids

JsonDict = dict[str, Any]
Outcome = tuple[int, JsonDict]
_JsonT = TypeVar("_JsonT")

IDEMPOTENCY_KEY_MIN = ids.IDEMPOTENCY_KEY_MIN
IDEMPOTENCY_KEY_MAX = ids.IDEMPOTENCY_KEY_MAX


class ApiError(Exception):
    """An API error answer: HTTP status plus the `{"status":"error",...}` body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        errors: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = dict(errors) if errors else None
        self.extra = dict(extra) if extra else None

    def body(self) -> JsonDict:
        out: JsonDict = {"status": "error", "code": self.code, "message": self.message}
        if self.errors:
            out["errors"] = self.errors
        if self.extra:
            out.update(self.extra)
        return out


def error_body(code: str, message: str, errors: Mapping[str, Any] | None = None) -> JsonDict:
    return ApiError(0, code, message, errors).body()


def _invalid(field_name: str, message: str) -> ApiError:
    return ApiError(422, "invalid_value", f"{field_name} {message}", {field_name: [message]})


# Where `_check_fields` reports unknown fields, per thread: `Store.execute` points `.report` at its findings for
# the action the thread runs; outside an action unknown fields are simply ignored.
_field_sink = threading.local()


def _check_fields(
    params: Mapping[str, Any], allowed: Iterable[str], required: Iterable[str] = (), where: str = ""
) -> None:
    """Missing required fields are a 422 (the API's answer too); unknown fields are a finding, not an error:
    Prefactor drops unknown fields without an error (its TypeScript client's changelog)."""
    allowed_set = set(allowed)
    errors: dict[str, list[str]] = {}
    sink: Callable[[str], None] | None = getattr(_field_sink, "report", None)
    for name in params:
        if name not in allowed_set and sink is not None:
            sink(where + name)
    for name in required:
        if params.get(name) is None:
            errors[where + name] = ["is required"]
    if errors:
        first = next(iter(errors))
        raise ApiError(422, "validation_errors", f"invalid request: {first} {errors[first][0]}", errors)


def _opt_str(params: Mapping[str, Any], name: str, where: str = "") -> str | None:
    value = params.get(name)
    if value is not None and not isinstance(value, str):
        raise _invalid(where + name, "must be a string")
    return value


def _opt_obj(params: Mapping[str, Any], name: str, where: str = "") -> dict[str, Any] | None:
    value = params.get(name)
    if value is not None and not isinstance(value, dict):
        raise _invalid(where + name, "must be a JSON object")
    return value


def _opt_time(params: Mapping[str, Any], name: str) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        raise _invalid(name, str(exc)) from None


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _copy(value: _JsonT) -> _JsonT:
    # Everything stored came from JSON, so a JSON round trip is a faithful deep copy -- and much faster
    # than copy.deepcopy on 100k spans. JSON values only (dicts, lists, scalars): a tuple would come back a list.
    copied: _JsonT = json.loads(json.dumps(value))
    return copied


def _drop_nones(params: Mapping[str, Any]) -> JsonDict:
    # An explicit null and an omitted field mean the same to the API (Python SDKs send nulls, TS omits).
    out = {k: v for k, v in params.items() if v is not None}
    details = out.get("details")
    if isinstance(details, dict):
        out["details"] = {k: v for k, v in details.items() if v is not None}
    return out


def fingerprint(action: str, params: Mapping[str, Any]) -> bytes:
    """Identity of one action's content, independent of key order, nulls and REST-vs-bulk form."""
    return hashlib.blake2b(f"{action}\n{_canonical(_drop_nones(params))}".encode(), digest_size=16).digest()


def validate_idempotency_key(value: object, name: str = "idempotency_key") -> str:
    if not isinstance(value, str) or not IDEMPOTENCY_KEY_MIN <= len(value) <= IDEMPOTENCY_KEY_MAX:
        raise ApiError(
            422,
            "validation_errors",
            f"{name} must be a string of {IDEMPOTENCY_KEY_MIN}-{IDEMPOTENCY_KEY_MAX} characters",
            {name: [f"must be a string of {IDEMPOTENCY_KEY_MIN}-{IDEMPOTENCY_KEY_MAX} characters"]},
        )
    return value
