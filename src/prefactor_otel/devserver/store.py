"""The dev server's in-memory, thread-safe account state and the API actions that change it.

Everything here is HTTP-free: an action takes its parameters in one canonical form (REST path parameters
become fields, exactly as a bulk item carries them) and returns `(http_status, body)`. That single form is
what makes REST and bulk share idempotency keys, and what the server and the tests both drive.

Strictness is the point: the server rejects what a careful real server could reject (ids outside the
account partition, unregistered span types, illegal state transitions), so an exporter that passes here has no
slack to rely on. Where the real API is documented or inferred to accept something (unknown fields, which
Prefactor drops) or its behaviour is unknown (a payload breaking its registered schema, a run finished
`complete` with open spans, an incomplete `data_risk`), the server answers as the API would and records a
**strict-mode finding** instead (`Store.findings()`, `DevServer.findings()`, `GET /_dev/findings`), for tests to
inspect. docs/local-server.md lists which rule is which.

Threads: the server's request threads and the test thread call in concurrently; one RLock (`_lock`) guards all
state, findings included.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prefactor_otel import ids
from prefactor_otel.devserver.schema_check import violations
from prefactor_otel.devserver.timefmt import format_timestamp, now_us, parse_timestamp

JsonDict = dict[str, Any]
Outcome = tuple[int, JsonDict]

REGISTER = "agent_instances/register"
START = "agent_instances/start"
FINISH_INSTANCE = "agent_instances/finish"
TERMINATE = "agent_instances/terminate"
RECORD_QUALITY = "agent_instances/record_quality"
CREATE_SPAN = "agent_spans/create"
FINISH_SPAN = "agent_spans/finish"

# What `POST /api/v1/bulk` executes. Terminate is REST-only: nothing shows it exists in bulk.
BULK_ACTIONS = frozenset({REGISTER, START, FINISH_INSTANCE, CREATE_SPAN, FINISH_SPAN, RECORD_QUALITY})
# Real Prefactor bulk types we do not serve: answered `not_implemented` rather than `invalid_action`,
# so a test can tell "the dev server lacks it" from "no such thing".
KNOWN_UNSERVED_BULK_TYPES = frozenset(
    {
        "agents/list",
        "agents/show",
        "agents/create",
        "agents/update",
        "environments/list",
        "environments/show",
        "environments/create",
        "environments/update",
        "agent_instances/list",
        "agent_instances/show",
        "agent_spans/list",
    }
)

SPAN_STATUSES = ("pending", "active", "complete", "failed", "cancelled")
FINISH_STATUSES = ("complete", "failed", "cancelled")
TERMINAL_INSTANCE = frozenset({"complete", "failed", "cancelled", "terminated"})
PURPOSES = ("live", "smoke_test", "eval")
IDEMPOTENCY_KEY_MIN = ids.IDEMPOTENCY_KEY_MIN
IDEMPOTENCY_KEY_MAX = ids.IDEMPOTENCY_KEY_MAX
MAX_PAGE_SIZE = 100
_DATA_RISK_KEYS = ("action_profile", "params_data_categories", "result_data_categories")
MAX_FINDINGS = 1000  # a runaway client must not grow the server without bound
# Same language as ids.is_pfid (first character carries 3 bits); the tests hold the two together.
_PFID_RE = re.compile(r"^[0-7][0-9abcdefghjkmnpqrstvwxyz]{31}$")


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


def _copy(value: Any) -> Any:
    # Everything stored came from JSON, so a JSON round trip is a faithful deep copy -- and much faster
    # than copy.deepcopy on 100k spans.
    return json.loads(json.dumps(value))


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


@dataclass
class _KeyRecord:
    fingerprint: bytes
    status: int
    body: JsonDict


@dataclass
class _SchemaVersion:
    data: JsonDict
    titles: dict[str, str]
    quality: dict[str, JsonDict] = field(default_factory=dict)  # quality schema name -> its entry
    span_types: dict[str, JsonDict] = field(default_factory=dict)  # span type name -> its entry


@dataclass
class _Instance:
    id: str
    agent_version_id: str
    schema_version: _SchemaVersion
    environment_id: str
    external_identifier: str | None
    purpose: str
    inserted_us: int
    status: str = "pending"
    updated_us: int = 0
    started_us: int | None = None
    finished_us: int | None = None
    termination_reason: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPAN_STATUSES, 0))
    span_ids: list[str] = field(default_factory=list)
    quality_payloads: dict[str, JsonDict] = field(default_factory=dict)
    quality_summaries: dict[str, str] = field(default_factory=dict)


@dataclass
class _Span:
    # `data` is the API dict and is never mutated: a change builds a new dict, so a stored idempotent
    # response can share the old one and still replay exactly what was first answered.
    data: JsonDict
    instance_id: str
    status: str
    started_us: int | None
    finished_us: int | None


class Store:
    """One account (seeded agent and environment) and everything registered under it."""

    def __init__(
        self,
        *,
        account_id: str,
        agent_id: str,
        environment_id: str,
        partition: int,
        bulk_actions: frozenset[str] | None = None,
        agent_deployment_id: str | None = None,
    ) -> None:
        # A subset of BULK_ACTIONS emulates a server whose bulk endpoint lacks some `_type`s (the inferred
        # `agent_instances/start|finish`), so the exporter's REST fallback can be tested.
        self.bulk_actions = BULK_ACTIONS if bulk_actions is None else frozenset(bulk_actions) & BULK_ACTIONS
        self.account_id = account_id
        self.agent_id = agent_id
        self.environment_id = environment_id
        self.partition = partition
        self._partition_chars = ids.encode(0, partition, 0)[10:16]
        # The seeded agent deployed into the seeded environment: prefactor-http 0.4.3 requires its id on every
        # agent instance (AgentInstance.agent_deployment_id) and fails to parse an answer without it.
        self.agent_deployment_id = agent_deployment_id or self.new_id()
        self._created_us = now_us()
        self._lock = threading.RLock()
        self._findings: list[JsonDict] = []
        self._current_action = ""
        self._instances: dict[str, _Instance] = {}
        self._spans: dict[str, _Span] = {}
        self._keys: dict[str, _KeyRecord] = {}
        self._agent_versions: dict[str, JsonDict] = {}  # content fingerprint -> version
        self._schema_versions: dict[str, _SchemaVersion] = {}  # content fingerprint -> version
        self._external_ids: dict[str, str] = {}  # instance external_identifier -> instance id
        self._actions: dict[str, Callable[[JsonDict], JsonDict]] = {
            REGISTER: self._register,
            START: self._start,
            FINISH_INSTANCE: self._finish_instance,
            TERMINATE: self._terminate,
            CREATE_SPAN: self._create_span,
            FINISH_SPAN: self._finish_span,
            RECORD_QUALITY: self._record_quality,
        }

    # ------------------------------------------------------------------ ids

    def new_id(self, at_us: int | None = None) -> str:
        millis = (now_us() if at_us is None else at_us) // 1000
        return ids.encode(max(0, min(millis, ids.MAX_TIMESTAMP)), self.partition, secrets.randbits(80))

    def _check_id(self, name: str, value: object) -> str:
        # Fast path, hot in bulk: a canonical PFID's partition is exactly its characters 10-15, so a
        # regex match plus one slice comparison equals is_pfid() + extract_partition() without decoding.
        if isinstance(value, str) and _PFID_RE.match(value) and value[10:16] == self._partition_chars:
            return value
        if not ids.is_pfid(value):
            raise _invalid(name, "must be a canonical PFID (32 lowercase Crockford base32 characters)")
        assert isinstance(value, str)
        if ids.extract_partition(value) != self.partition:
            raise _invalid(name, "is not in this account's PFID partition")
        return value

    # ------------------------------------------------------------------ actions

    def execute(self, action: str, params: JsonDict, idempotency_key: str | None = None) -> Outcome:
        """Run one action atomically, with idempotent replay. Only successes are remembered under their key:
        a rejected request committed nothing, so the same key may be used again once it is fixed."""
        handler = self._actions.get(action)
        if handler is None:
            return 404, error_body("not_found", f"unknown action {action}")
        try:
            params, idempotency_key = self._normalise(action, params, idempotency_key)
        except ApiError as exc:
            return exc.status, exc.body()
        digest = fingerprint(action, params) if idempotency_key is not None else b""
        with self._lock, self._finding_context(action):
            if idempotency_key is not None:
                record = self._keys.get(idempotency_key)
                if record is not None:
                    if record.fingerprint == digest:
                        return record.status, record.body
                    return 409, error_body(
                        "idempotency_key_already_used",
                        "idempotency key already used for a different request",
                        {"idempotency_key": ["already used for a different request"]},
                    )
            try:
                body = handler(params)
            except ApiError as exc:
                return exc.status, exc.body()
            if idempotency_key is not None:
                self._keys[idempotency_key] = _KeyRecord(digest, 200, body)
            return 200, body

    # ------------------------------------------------------------------ strict-mode findings

    @contextlib.contextmanager
    def _finding_context(self, action: str) -> Iterator[None]:
        # Called with `_lock` held: `_current_action` belongs to the one action running.
        previous = getattr(_field_sink, "report", None)
        self._current_action = action
        _field_sink.report = self._unknown_field
        try:
            yield
        finally:
            _field_sink.report = previous

    def _unknown_field(self, name: str) -> None:
        self._find("unknown_field", f"unknown field {name} (dropped)", name)

    def _find(self, rule: str, message: str, field_name: str | None = None, **context: Any) -> None:
        finding: JsonDict = {"rule": rule, "action": self._current_action, "message": message}
        if field_name is not None:
            finding["field"] = field_name
        finding.update(context)
        with self._lock:
            if len(self._findings) < MAX_FINDINGS:
                self._findings.append(finding)

    def findings(self) -> list[JsonDict]:
        """Strict-mode findings so far, oldest first: what a stricter server would have refused (see the module
        docstring). Copies."""
        with self._lock:
            return _copy(self._findings)

    def clear_findings(self) -> None:
        with self._lock:
            self._findings.clear()

    def _check_schema(self, value: Any, schema: Any, what: str, **context: Any) -> None:
        problems = violations(value, schema)
        if problems:
            self._find("schema_violation", f"{what} breaks its registered schema: {'; '.join(problems)}", **context)

    def _check_data_risk(self, entry: Mapping[str, Any], at: str) -> None:
        risk = entry.get("data_risk")
        if isinstance(risk, dict):
            missing = [
                k for k in ("action_profile", "params_data_categories", "result_data_categories") if k not in risk
            ]
            if missing:
                message = f"{at}data_risk lacks {', '.join(missing)} (prefactor-http's DataRisk requires all three)"
                self._find("data_risk_incomplete", message, at + "data_risk")

    @staticmethod
    def _normalise(action: str, params: JsonDict, key: str | None) -> tuple[JsonDict, str | None]:
        # Python SDKs put a span create's key inside `details`, TS beside it: accept both, agree or fail.
        if action != CREATE_SPAN:
            return params, key
        if "details" not in params and params:
            # The flat bulk form prefactor-http's BulkClient docstring shows (`agent_spans/create` with the
            # span's fields beside `_type`) is the same create: the fields are the details.
            params = {"details": params}
        details = params.get("details")
        if not isinstance(details, dict) or "idempotency_key" not in details:
            return params, key
        inner = details["idempotency_key"]
        details = {k: v for k, v in details.items() if k != "idempotency_key"}
        params = {**params, "details": details}
        if inner is None:
            return params, key
        inner = validate_idempotency_key(inner, "details.idempotency_key")
        if key is not None and inner != key:
            raise ApiError(
                422,
                "validation_errors",
                "details.idempotency_key differs from idempotency_key",
                {"details.idempotency_key": ["differs from idempotency_key"]},
            )
        return params, inner

    def bulk(self, body: object) -> tuple[int, JsonDict, int | None]:
        """`POST /api/v1/bulk`: returns (status, body, item count or None)."""
        if not isinstance(body, dict):
            return 422, error_body("validation_errors", "body must be a JSON object", {"body": ["not an object"]}), None
        items = body.get("items")
        count = len(items) if isinstance(items, list) else None
        with self._lock:
            self._current_action = "bulk"
            for name in sorted(set(body) - {"items"}):
                self._find("unknown_field", f"unknown field {name} (dropped)", name)
        if not isinstance(items, list) or not items:
            return 422, error_body("validation_errors", "items must be a non-empty list", {"items": ["empty"]}), count
        item_errors: dict[str, dict[str, list[str]]] = {}
        seen: set[str] = set()
        for index, item in enumerate(items):
            problems: dict[str, list[str]] = {}
            if not isinstance(item, dict):
                item_errors[str(index)] = {"item": ["must be an object"]}
                continue
            if not isinstance(item.get("_type"), str) or not item["_type"]:
                problems["_type"] = ["is required and must be a string"]
            key = item.get("idempotency_key")
            if not isinstance(key, str) or not IDEMPOTENCY_KEY_MIN <= len(key) <= IDEMPOTENCY_KEY_MAX:
                problems["idempotency_key"] = [
                    f"is required, a string of {IDEMPOTENCY_KEY_MIN}-{IDEMPOTENCY_KEY_MAX} characters"
                ]
            elif key in seen:
                problems["idempotency_key"] = ["must be unique within the request"]
            else:
                seen.add(key)
            if problems:
                item_errors[str(index)] = problems
        if item_errors:
            first = next(iter(item_errors))
            message = f"invalid item {first}: " + "; ".join(
                f"{name} {msgs[0]}" for name, msgs in item_errors[first].items()
            )
            return 422, error_body("validation_errors", message, {"items": item_errors}), count

        outputs: dict[str, JsonDict] = {}
        for item in items:
            kind, key = item["_type"], item["idempotency_key"]
            if kind not in self.bulk_actions:
                if kind in KNOWN_UNSERVED_BULK_TYPES:
                    outputs[key] = error_body("not_implemented", f"_type {kind} is not served by the dev server")
                else:
                    outputs[key] = error_body("invalid_action", f"unknown _type {kind}")
                break
            # `method`/`path` are what the TS CLI adds to items; the server dispatches on `_type` only.
            params = {k: v for k, v in item.items() if k not in ("_type", "idempotency_key", "method", "path")}
            status, out = self.execute(kind, params, key)
            outputs[key] = out
            if status >= 400:
                break
        return 200, {"status": "success", "outputs": outputs}, count

    # ------------------------------------------------------------------ instances

    def _register(self, params: JsonDict) -> JsonDict:
        _check_fields(
            params,
            (
                "agent_id",
                "environment_id",
                "agent_version",
                "agent_schema_version",
                "id",
                "external_identifier",
                "update_current_version",
                "purpose",
            ),
            required=("agent_version", "agent_schema_version"),
        )
        agent_id = params.get("agent_id")
        if agent_id is not None and self._check_id("agent_id", agent_id) != self.agent_id:
            raise ApiError(404, "not_found", "agent not found")
        environment_id = params.get("environment_id")
        if environment_id is None:
            environment_id = self.environment_id
        elif self._check_id("environment_id", environment_id) != self.environment_id:
            raise ApiError(404, "not_found", "environment not found")
        instance_id = params.get("id")
        if instance_id is not None:
            self._check_id("id", instance_id)
        purpose = params.get("purpose") or "live"
        if purpose not in PURPOSES:
            raise _invalid("purpose", f"must be one of {', '.join(PURPOSES)}")
        if params.get("update_current_version") is not None and not isinstance(params["update_current_version"], bool):
            raise _invalid("update_current_version", "must be a boolean")
        external_identifier = _opt_str(params, "external_identifier")
        version = self._validate_agent_version(params.get("agent_version"))
        schema = self._validate_schema_version(params.get("agent_schema_version"))

        if instance_id is not None and instance_id in self._instances:
            raise ApiError(409, "invalid_value", "id already exists", {"id": ["already exists"]})
        if external_identifier is not None and external_identifier in self._external_ids:
            raise ApiError(
                409,
                "invalid_value",
                "external_identifier already used by another instance of this agent",
                {"external_identifier": ["already used"]},
            )

        now = now_us()
        version_id = self._intern_agent_version(version, now)
        schema_version = self._intern_schema_version(schema, now)
        instance = _Instance(
            id=instance_id or self.new_id(now),
            agent_version_id=version_id,
            schema_version=schema_version,
            environment_id=environment_id,
            external_identifier=external_identifier,
            purpose=purpose,
            inserted_us=now,
            updated_us=now,
        )
        self._instances[instance.id] = instance
        if external_identifier is not None:
            self._external_ids[external_identifier] = instance.id
        return {"status": "success", "details": self._render_instance(instance)}

    def _validate_agent_version(self, value: object) -> JsonDict:
        if not isinstance(value, dict):
            raise _invalid("agent_version", "must be a JSON object")
        _check_fields(
            value, ("name", "external_identifier", "description", "runtime_environment"), where="agent_version."
        )
        for name in ("name", "external_identifier", "description"):
            _opt_str(value, name, "agent_version.")
        runtime = _opt_obj(value, "runtime_environment", "agent_version.")
        if runtime is not None:
            where = "agent_version.runtime_environment."
            _check_fields(runtime, ("os", "runtime", "prefactor_sdk", "agent_sdk"), where=where)
            for name in ("os", "runtime"):
                _opt_str(runtime, name, where)
            for name in ("prefactor_sdk", "agent_sdk"):
                entries = runtime.get(name)
                if entries is not None and (
                    not isinstance(entries, list) or not all(isinstance(e, str) for e in entries)
                ):
                    raise _invalid(where + name, "must be a list of strings")
        return value

    def _validate_schema_version(self, value: object) -> JsonDict:
        where = "agent_schema_version."
        if not isinstance(value, dict):
            raise _invalid("agent_schema_version", "must be a JSON object")
        _check_fields(
            value,
            ("external_identifier", "span_type_schemas", "span_schemas", "span_result_schemas", "quality_schemas"),
            where=where,
        )
        _opt_str(value, "external_identifier", where)
        for name in ("span_schemas", "span_result_schemas"):
            legacy = _opt_obj(value, name, where)
            if legacy is not None and not all(isinstance(v, dict) for v in legacy.values()):
                raise _invalid(where + name, "must map span type names to JSON schema objects")
        self._validate_quality_schemas(value.get("quality_schemas"), where + "quality_schemas")
        types = value.get("span_type_schemas")
        if types is None:
            return value
        texts = ("title", "description", "template", "result_template")
        fields = ("name", "params_schema", "result_schema", *texts, "data_risk")
        for at, entry in self._named_entries(types, where + "span_type_schemas", fields, "params_schema", "span type"):
            _opt_obj(entry, "result_schema", at)
            _opt_obj(entry, "data_risk", at)
            self._check_data_risk(entry, at)
            for text in texts:
                _opt_str(entry, text, at)
        return value

    def _validate_quality_schemas(self, value: object, where: str) -> None:
        if value is None:
            return
        texts = ("title", "description", "template")
        fields = ("name", "schema", *texts, "data_risk")
        for at, entry in self._named_entries(value, where, fields, "schema", "quality schema"):
            _opt_obj(entry, "data_risk", at)
            self._check_data_risk(entry, at)
            for text in texts:
                _opt_str(entry, text, at)

    @staticmethod
    def _named_entries(
        value: object, where: str, fields: tuple[str, ...], schema_field: str, kind: str
    ) -> list[tuple[str, dict[str, Any]]]:
        """A list of objects with a unique non-empty `name` and a JSON-object `schema_field`, checked;
        `(path prefix, entry)` for each, for the checks that differ."""
        if not isinstance(value, list):
            raise _invalid(where, "must be a list")
        names: set[str] = set()
        entries = []
        for index, entry in enumerate(value):
            at = f"{where}.{index}."
            if not isinstance(entry, dict):
                raise _invalid(at[:-1], "must be a JSON object")
            _check_fields(entry, fields, required=("name", schema_field), where=at)
            name = entry["name"]
            if not isinstance(name, str) or not name:
                raise _invalid(at + "name", "must be a non-empty string")
            if name in names:
                raise _invalid(at + "name", f"duplicates {kind} {name!r}")
            names.add(name)
            if not isinstance(entry[schema_field], dict):
                raise _invalid(at + schema_field, "must be a JSON object")
            entries.append((at, entry))
        return entries

    def _intern_agent_version(self, version: JsonDict, now: int) -> str:
        key = _canonical(_drop_nones(version))
        existing = self._agent_versions.get(key)
        if existing is not None:
            return str(existing["id"])
        data = {
            "type": "agent_version",
            "id": self.new_id(now),
            "account_id": self.account_id,
            "agent_id": self.agent_id,
            "name": version.get("name"),
            "external_identifier": version.get("external_identifier"),
            "description": version.get("description"),
            "runtime_environment": copy.deepcopy(version.get("runtime_environment")),
            "inserted_at": format_timestamp(now),
        }
        self._agent_versions[key] = data
        return str(data["id"])

    def _intern_schema_version(self, schema: JsonDict, now: int) -> _SchemaVersion:
        key = _canonical(_drop_nones(schema))
        existing = self._schema_versions.get(key)
        if existing is not None:
            return existing
        if schema.get("span_type_schemas") is not None:
            entries = [
                {
                    "name": e["name"],
                    "params_schema": e["params_schema"],
                    "result_schema": e.get("result_schema") or {},
                    "title": e.get("title") or e["name"],
                    "description": e.get("description"),
                    "template": e.get("template"),
                    "data_risk": e.get("data_risk"),
                }
                for e in schema["span_type_schemas"]
            ]
        else:
            # Legacy maps: only used when span_type_schemas is absent, as the real backend does.
            results = schema.get("span_result_schemas") or {}
            entries = [
                {
                    "name": name,
                    "params_schema": params_schema,
                    "result_schema": results.get(name, {}),
                    "title": name,
                    "description": None,
                    "template": None,
                    "data_risk": None,
                }
                for name, params_schema in (schema.get("span_schemas") or {}).items()
            ]
        quality = [
            {
                "name": q["name"],
                "schema": q["schema"],
                "title": q.get("title") or q["name"],
                "description": q.get("description"),
                "template": q.get("template"),
                "data_risk": q.get("data_risk"),
            }
            for q in schema.get("quality_schemas") or []
        ]
        data = {
            "type": "agent_schema_version",
            "id": self.new_id(now),
            "account_id": self.account_id,
            "agent_id": self.agent_id,
            "external_identifier": schema.get("external_identifier"),
            "span_type_schemas": copy.deepcopy(entries),
            "quality_schemas": copy.deepcopy(quality),
            "inserted_at": format_timestamp(now),
        }
        version = _SchemaVersion(
            data=data,
            titles={e["name"]: e["title"] for e in entries},
            quality={q["name"]: q for q in quality},
            span_types={e["name"]: e for e in entries},
        )
        self._schema_versions[key] = version
        return version

    def _instance_for(self, params: JsonDict, name: str = "agent_instance_id") -> _Instance:
        instance_id = self._check_id(name, params.get(name))
        instance = self._instances.get(instance_id)
        if instance is None:
            raise ApiError(404, "not_found", "agent instance not found")
        return instance

    def _start(self, params: JsonDict) -> JsonDict:
        _check_fields(params, ("agent_instance_id", "timestamp"), required=("agent_instance_id",))
        timestamp = _opt_time(params, "timestamp")
        instance = self._instance_for(params)
        if instance.status != "pending":
            raise ApiError(409, "invalid_action", f"cannot start an instance that is {instance.status}")
        now = now_us()
        instance.status = "active"
        instance.started_us = now if timestamp is None else timestamp
        instance.updated_us = now
        return {"status": "success", "details": self._render_instance(instance)}

    def _finish_instance(self, params: JsonDict) -> JsonDict:
        _check_fields(params, ("agent_instance_id", "status", "timestamp"), required=("agent_instance_id",))
        status = params.get("status") or "complete"
        if status not in FINISH_STATUSES:
            raise _invalid("status", f"must be one of {', '.join(FINISH_STATUSES)}")
        timestamp = _opt_time(params, "timestamp")
        instance = self._instance_for(params)
        if instance.status in TERMINAL_INSTANCE:
            raise ApiError(409, "invalid_action", f"instance is already {instance.status}")
        now = now_us()
        finished = now if timestamp is None else timestamp
        if status == "cancelled":
            if instance.status != "pending":
                raise ApiError(409, "invalid_action", "only a pending instance can be cancelled")
            instance.started_us = finished
        else:
            if instance.status != "active":
                raise ApiError(409, "invalid_action", f"only an active instance can finish as {status}")
            if instance.started_us is not None and finished < instance.started_us:
                raise _invalid("timestamp", "is before the instance started")
            open_spans = instance.counts["active"] + instance.counts["pending"]
            if status == "complete" and open_spans:
                message = f"instance finished complete with {open_spans} span(s) still open"
                self._find("finished_with_open_spans", message, agent_instance_id=instance.id)
        instance.status = status
        instance.finished_us = finished
        instance.updated_us = now
        return {"status": "success", "details": self._render_instance(instance)}

    def _terminate(self, params: JsonDict) -> JsonDict:
        _check_fields(params, ("agent_instance_id", "reason"))
        reason = params.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise ApiError(422, "required_value", "reason is required", {"reason": ["is required"]})
        instance = self._instance_for(params)
        if instance.status != "active":
            raise ApiError(409, "invalid_action", f"only an active instance can be terminated, not {instance.status}")
        now = now_us()
        instance.status = "terminated"
        instance.termination_reason = reason
        instance.finished_us = now
        instance.updated_us = now
        return {"status": "success", "details": self._render_instance(instance)}

    def _record_quality(self, params: JsonDict) -> JsonDict:
        # Sets one named payload, or clears it with a null payload; other names stay (the documented contract of
        # prefactor-http's AgentInstanceClient.record_quality). Allowed in any run status: evaluations of a run
        # usually come after it finished.
        _check_fields(params, ("agent_instance_id", "name", "payload"), required=("agent_instance_id", "name"))
        name = params["name"]
        if not isinstance(name, str) or not name:
            raise _invalid("name", "must be a non-empty string")
        payload = _opt_obj(params, "payload")
        instance = self._instance_for(params)
        entry = instance.schema_version.quality.get(name)
        if entry is None:
            raise _invalid("name", "is not a quality schema registered in this instance's agent schema version")
        if payload is None:
            instance.quality_payloads.pop(name, None)
            instance.quality_summaries.pop(name, None)
        else:
            self._check_schema(payload, entry["schema"], f"quality payload {name!r}", agent_instance_id=instance.id)
            instance.quality_payloads[name] = payload
            template = entry.get("template")
            if template:
                instance.quality_summaries[name] = render_template(template, payload)
            else:
                instance.quality_summaries.pop(name, None)
        instance.updated_us = now_us()
        return {"status": "success", "details": self._render_instance(instance)}

    def _render_instance(self, instance: _Instance) -> JsonDict:
        counts = instance.counts
        finished = counts["complete"] + counts["failed"] + counts["cancelled"]
        return {
            "type": "agent_instance",
            "id": instance.id,
            "account_id": self.account_id,
            "agent_id": self.agent_id,
            "agent_version_id": instance.agent_version_id,
            "agent_schema_version_id": instance.schema_version.data["id"],
            "environment_id": instance.environment_id,
            "agent_deployment_id": self.agent_deployment_id,
            "status": instance.status,
            "inserted_at": format_timestamp(instance.inserted_us),
            "updated_at": format_timestamp(instance.updated_us),
            "started_at": format_timestamp(instance.started_us),
            "finished_at": format_timestamp(instance.finished_us),
            "span_counts": {"total": sum(counts.values()), **counts, "finished": finished},
            "external_identifier": instance.external_identifier,
            "purpose": instance.purpose,
            "termination_reason": instance.termination_reason,
            "quality_payloads": _copy(instance.quality_payloads),
            "quality_summaries": dict(instance.quality_summaries),
        }

    @staticmethod
    def _control(instance: _Instance) -> JsonDict | None:
        if instance.status == "terminated":
            return {"terminate": True, "reason": instance.termination_reason}
        return None

    # ------------------------------------------------------------------ spans

    def _create_span(self, params: JsonDict) -> JsonDict:
        _check_fields(params, ("details",), required=("details",))
        details = params["details"]
        if not isinstance(details, dict):
            raise _invalid("details", "must be a JSON object")
        _check_fields(
            details,
            (
                "agent_instance_id",
                "schema_name",
                "status",
                "payload",
                "result_payload",
                "id",
                "parent_span_id",
                "started_at",
                "finished_at",
                "sensitive_encoding",
            ),
            # `payload` defaults to {} as in prefactor-http's CreateAgentSpanRequest (the flat bulk form omits it).
            required=("agent_instance_id", "schema_name", "status"),
            where="details.",
        )
        instance_id = self._check_id("agent_instance_id", details["agent_instance_id"])
        span_id = details.get("id")
        if span_id is not None:
            self._check_id("id", span_id)
        parent_id = details.get("parent_span_id")
        if parent_id is not None:
            self._check_id("parent_span_id", parent_id)
        schema_name = details["schema_name"]
        if not isinstance(schema_name, str) or not schema_name:
            raise _invalid("schema_name", "must be a non-empty string")
        status = details["status"]
        if status not in SPAN_STATUSES:
            raise _invalid("status", f"must be one of {', '.join(SPAN_STATUSES)}")
        payload = details.get("payload", {})
        if not isinstance(payload, dict):
            raise _invalid("payload", "must be a JSON object")
        result_payload = _opt_obj(details, "result_payload")
        if result_payload is not None and status not in FINISH_STATUSES:
            raise _invalid("result_payload", "is only allowed when status is complete, failed or cancelled")
        sensitive = details.get("sensitive_encoding")
        if sensitive is not None and not isinstance(sensitive, bool):
            raise _invalid("sensitive_encoding", "must be a boolean")
        started = _opt_time(details, "started_at")
        finished = _opt_time(details, "finished_at")
        now = now_us()
        if status in ("complete", "failed"):
            if finished is None:
                raise _invalid("finished_at", f"is required when status is {status}")
            if started is None:
                started = finished
        elif status == "cancelled":
            finished = now if finished is None else finished
            started = finished if started is None else started
        elif finished is not None:
            raise _invalid("finished_at", f"must be empty while the span is {status}")
        elif status == "pending" and started is not None:
            raise _invalid("started_at", "must be empty while the span is pending")
        elif status == "active" and started is None:
            started = now
        if started is not None and finished is not None and finished < started:
            raise _invalid("finished_at", "is before started_at")

        instance = self._instances.get(instance_id)
        if instance is None:
            raise ApiError(404, "not_found", "agent instance not found")
        # `pending` is accepted: prefactor-core queues the run's start but POSTs span creates at once
        # (SpanManager.start), so the real API must take spans before the start lands. `terminated` is accepted
        # with `control` in the answer: the official clients read `control` only from successful span answers
        # (prefactor_http AgentSpanClient.create), so that is how a create learns of termination. See
        # docs/local-server.md.
        if instance.status not in ("pending", "active", "terminated"):
            control = self._control(instance)
            raise ApiError(
                409,
                "invalid_action",
                f"cannot create spans in an instance that is {instance.status}",
                extra={"control": control} if control else None,
            )
        title = instance.schema_version.titles.get(schema_name)
        if title is None:
            raise _invalid("schema_name", "is not registered in this instance's agent schema version")
        if parent_id is not None:
            parent = self._spans.get(parent_id)
            if parent is None:
                raise ApiError(404, "not_found", "parent span not found", {"parent_span_id": ["not found"]})
            if parent.instance_id != instance_id:
                raise ApiError(
                    404,
                    "not_found",
                    "parent span not found in this agent instance",
                    {"parent_span_id": ["belongs to another agent instance"]},
                )
        if span_id is not None and span_id in self._spans:
            raise ApiError(409, "invalid_value", "id already exists", {"id": ["already exists"]})

        span_type = instance.schema_version.span_types[schema_name]
        self._check_schema(payload, span_type["params_schema"], f"payload of a {schema_name} span", span_id=span_id)
        if result_payload is not None:
            what = f"result_payload of a {schema_name} span"
            self._check_schema(result_payload, span_type["result_schema"], what, span_id=span_id)
        span_id = span_id or self.new_id(started if started is not None else now)
        data: JsonDict = {
            "type": "agent_span",
            "id": span_id,
            "account_id": self.account_id,
            "agent_id": self.agent_id,
            "agent_instance_id": instance_id,
            "parent_span_id": parent_id,
            "schema_name": schema_name,
            "schema_title": title,
            "status": status,
            "payload": payload,
            "result_payload": result_payload,
            "summary": None,
            "sensitive_encoding": bool(sensitive),
            "started_at": format_timestamp(started),
            "finished_at": format_timestamp(finished),
            "inserted_at": format_timestamp(now),
            "updated_at": format_timestamp(now),
        }
        self._spans[span_id] = _Span(data, instance_id, status, started, finished)
        instance.span_ids.append(span_id)
        instance.counts[status] += 1
        out: JsonDict = {"status": "success", "details": data}
        control = self._control(instance)
        if control:
            out["control"] = control
        return out

    def _finish_span(self, params: JsonDict) -> JsonDict:
        _check_fields(
            params,
            ("agent_span_id", "status", "result_payload", "timestamp", "sensitive_encoding"),
            required=("agent_span_id",),
        )
        span_id = self._check_id("agent_span_id", params["agent_span_id"])
        status = params.get("status") or "complete"
        if status not in FINISH_STATUSES:
            raise _invalid("status", f"must be one of {', '.join(FINISH_STATUSES)}")
        result_payload = _opt_obj(params, "result_payload")
        sensitive = params.get("sensitive_encoding")
        if sensitive is not None and not isinstance(sensitive, bool):
            raise _invalid("sensitive_encoding", "must be a boolean")
        timestamp = _opt_time(params, "timestamp")
        span = self._spans.get(span_id)
        if span is None:
            raise ApiError(404, "not_found", "agent span not found")
        instance = self._instances[span.instance_id]
        if instance.status not in ("pending", "active", "terminated"):
            raise ApiError(409, "invalid_action", f"the span's agent instance is {instance.status}")
        if span.status in FINISH_STATUSES:
            raise ApiError(409, "invalid_action", f"span is already {span.status}")
        if status == "cancelled" and span.status != "pending":
            raise ApiError(409, "invalid_action", "only a pending span can be cancelled")
        if status != "cancelled" and span.status != "active":
            raise ApiError(409, "invalid_action", f"only an active span can finish as {status}")
        if result_payload is not None:
            span_type = instance.schema_version.span_types.get(span.data["schema_name"], {})
            what = f"result_payload of a {span.data['schema_name']} span"
            self._check_schema(result_payload, span_type.get("result_schema"), what, span_id=span_id)
        now = now_us()
        finished = now if timestamp is None else timestamp
        started = finished if status == "cancelled" else span.started_us
        if started is not None and finished < started:
            raise _invalid("timestamp", "is before the span started")
        data = {
            **span.data,
            "status": status,
            "result_payload": result_payload,
            "started_at": format_timestamp(started),
            "finished_at": format_timestamp(finished),
            "updated_at": format_timestamp(now),
        }
        if sensitive is not None:
            data["sensitive_encoding"] = sensitive
        instance.counts[span.status] -= 1
        instance.counts[status] += 1
        self._spans[span_id] = _Span(data, span.instance_id, status, started, finished)
        out: JsonDict = {"status": "success", "details": data}
        control = self._control(instance)
        if control:
            out["control"] = control
        return out

    # ------------------------------------------------------------------ reads

    def get_instance(self, instance_id: str) -> Outcome:
        with self._lock:
            instance = self._instances.get(instance_id)
            if instance is None:
                return 404, error_body("not_found", "agent instance not found")
            return 200, {"status": "success", "details": self._render_instance(instance)}

    def get_span(self, span_id: str) -> Outcome:
        with self._lock:
            span = self._spans.get(span_id)
            if span is None:
                return 404, error_body("not_found", "agent span not found")
            return 200, {"status": "success", "details": span.data}

    def _render_agent(self, *, summary: bool, counts: bool) -> JsonDict:
        # The one seeded agent, read-only: every available action is off because the dev server serves no
        # agent writes. Field sets follow prefactor-http's Agent / AgentSummary.
        created = format_timestamp(self._created_us)
        agent: JsonDict = {
            "type": "agent",
            "id": self.agent_id,
            "name": "dev-server agent",
            "description": None,
            "external_identifier": None,
            "status": "active",
            "owner_person_id": None,
            "team_id": None,
            "available_actions": {"update": False, "retire": False, "reinstate": False, "delete": False},
            "inserted_at": created,
            "updated_at": created,
        }
        if summary:
            return agent
        agent["risk_profile_id"] = None
        if counts:
            by_status = dict.fromkeys(("pending", "active", "complete", "failed", "cancelled", "terminated"), 0)
            for instance in self._instances.values():
                by_status[instance.status] += 1
            finished = sum(by_status[s] for s in TERMINAL_INSTANCE)
            agent["instance_counts"] = {"total": len(self._instances), **by_status, "finished": finished}
        return agent

    def get_agent(self, agent_id: str) -> Outcome:
        with self._lock:
            if agent_id != self.agent_id:
                return 404, error_body("not_found", "agent not found")
            return 200, {"status": "success", "details": self._render_agent(summary=False, counts=True)}

    def show_agent(self, query: Mapping[str, str]) -> Outcome:
        agent_id, external = query.get("agent_id"), query.get("external_identifier")
        if (agent_id is None) == (external is None):
            message = "give exactly one of agent_id and external_identifier"
            return 422, error_body("validation_errors", message, {"agent_id": [message]})
        if agent_id != self.agent_id:  # the seeded agent has no external identifier
            return 404, error_body("not_found", "agent not found")
        counts = query.get("include_counts") == "true"
        with self._lock:
            return 200, {"status": "success", "details": self._render_agent(summary=False, counts=counts)}

    def list_agents(self, query: Mapping[str, str]) -> Outcome:
        with self._lock:
            rows = [self._render_agent(summary=True, counts=False)]
        # Filters on team/owner/risk profile match nothing but "no value": the seeded agent has none.
        if any(query.get(name) not in (None, "", "null") for name in ("team_id", "owner_person_id", "risk_profile_id")):
            rows = []
        return _page(rows, query, ("id", "name", "inserted_at"))

    def list_instances(self, query: Mapping[str, str]) -> Outcome:
        agent_id = query.get("agent_id")
        if not agent_id:
            return 422, error_body("validation_errors", "agent_id is required", {"agent_id": ["is required"]})
        version_id = query.get("agent_version_id")
        with self._lock:
            rows = [
                self._render_instance(i)
                for i in self._instances.values()
                if agent_id == self.agent_id and (version_id is None or i.agent_version_id == version_id)
            ]
        return _page(rows, query, ("id", "status", "started_at", "finished_at", "inserted_at"))

    def list_spans(self, query: Mapping[str, str]) -> Outcome:
        instance_id = query.get("agent_instance_id")
        agent_id = query.get("agent_id")
        with self._lock:
            if agent_id is not None and agent_id != self.agent_id:
                rows: list[JsonDict] = []
            elif instance_id is not None:
                instance = self._instances.get(instance_id)
                rows = [self._spans[s].data for s in instance.span_ids] if instance else []
            else:
                rows = [s.data for s in self._spans.values()]
        return _page(rows, query, ("id", "status", "started_at", "finished_at", "inserted_at", "schema_name"))

    def generate_pfids(self, body: object) -> Outcome:
        if not isinstance(body, dict):
            return 400, error_body("bad_request", "body must be a JSON object")
        try:
            _check_fields(body, ("count", "account_id", "idempotency_key"), required=("count",))
        except ApiError as exc:
            return exc.status, exc.body()
        count = body["count"]
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 1000:
            return 422, error_body("invalid_value", "count must be an integer 1-1000", {"count": ["1-1000"]})
        account_id = body.get("account_id")
        if account_id is not None and account_id != self.account_id:
            return 404, error_body("not_found", "account not found")
        now = now_us()
        return 200, {"status": "success", "details": {"pfids": [self.new_id(now) for _ in range(count)]}}

    # ------------------------------------------------------------------ inspection (Python API)

    def instances(self) -> list[JsonDict]:
        with self._lock:
            rows = [self._render_instance(i) for i in self._instances.values()]
        return rows

    def spans(self, instance_id: str | None = None) -> list[JsonDict]:
        with self._lock:
            if instance_id is None:
                rows = [s.data for s in self._spans.values()]
            else:
                instance = self._instances.get(instance_id)
                rows = [self._spans[s].data for s in instance.span_ids] if instance else []
            # Copy under the lock: callers may mutate what they get, the store must not notice.
            return _copy(rows)

    def snapshot(self) -> JsonDict:
        with self._lock:
            return _copy(
                {
                    "instances": [self._render_instance(i) for i in self._instances.values()],
                    "spans": [s.data for s in self._spans.values()],
                    "schema_versions": [v.data for v in self._schema_versions.values()],
                    "agent_versions": list(self._agent_versions.values()),
                    "findings": self._findings,
                }
            )

    def counts(self) -> tuple[int, int]:
        """(instances, spans) without copying anything: cheap enough to poll."""
        with self._lock:
            return len(self._instances), len(self._spans)


_TEMPLATE_FIELD = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")


def render_template(template: str, payload: Mapping[str, Any]) -> str:
    """`{{field}}` interpolation (dotted paths reach into objects); a missing field renders empty."""

    def value(match: re.Match[str]) -> str:
        current: Any = payload
        for part in match.group(1).split("."):
            current = current.get(part) if isinstance(current, Mapping) else None
        return "" if current is None else str(current)

    return _TEMPLATE_FIELD.sub(value, template)


def _sorted(rows: list[JsonDict], field_name: str, descending: bool) -> list[JsonDict]:
    # Nulls last in both directions; our ISO strings share one format, so they sort as their instants.
    present = [r for r in rows if r.get(field_name) is not None]
    missing = [r for r in rows if r.get(field_name) is None]
    return sorted(present, key=lambda r: r[field_name], reverse=descending) + missing


def _page(rows: list[JsonDict], query: Mapping[str, str], sortable: tuple[str, ...]) -> Outcome:
    try:
        offset = int(query.get("pagination[offset]", "0"))
        size = int(query.get("pagination[page_size]", str(MAX_PAGE_SIZE)))
    except ValueError:
        return 422, error_body("invalid_value", "pagination values must be integers")
    if offset < 0 or not 1 <= size <= MAX_PAGE_SIZE:
        return 422, error_body("invalid_value", f"pagination[page_size] must be 1-{MAX_PAGE_SIZE}, offset >= 0")
    sorting: JsonDict | None = None
    raw = query.get("sorting") or query.get("sorting[field]")
    if raw:
        descending = raw.startswith("-") or query.get("sorting[direction]", "asc").lower() == "desc"
        field_name = raw.lstrip("-")
        if field_name not in sortable:
            return 422, error_body("invalid_value", f"cannot sort by {field_name}", {"sorting": ["invalid"]})
        rows = _sorted(rows, field_name, descending)
        sorting = {"field": field_name, "direction": "desc" if descending else "asc"}
    total = len(rows)
    chosen = rows[offset : offset + size]
    pagination = {
        "item_count": total,
        "item_start": offset + 1 if chosen else 0,
        "item_end": offset + len(chosen),
        "next_page_offset": offset + size if offset + size < total else None,
        "page_count": (total + size - 1) // size,
        "page_index": offset // size + 1,  # one-based, as prefactor-http's PaginationOutput documents
        "page_offset": offset,
        "page_size": size,
        "previous_page_offset": max(0, offset - size) if offset > 0 else None,
    }
    return 200, {
        "status": "success",
        "summaries": _copy(chosen),
        "pagination": pagination,
        "sorting": sorting,
    }
